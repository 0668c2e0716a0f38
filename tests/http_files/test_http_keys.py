"""GET /keys publishes what a device needs to trust offers, and offers are sealed with it."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives import serialization

from ota_core.envelope import TrustedOfferKeys
from ota_core.keyfiles import ensure_offer_key, load_signer, rotate_offer_key
from ota_core.models import UpToDate, parse_offer
from ota_core.signing import ReleaseVerifier
from ota_core.verify import OfferChecker
from tests.http_files.live_server import Running


def _trusted_from_endpoint(server: Running) -> tuple[ReleaseVerifier, TrustedOfferKeys]:
    body = server.get("/keys").json()
    verifier = ReleaseVerifier.from_pem(server.dirs.public_key_path.read_bytes())
    assert body["release_key"]["key_id"] == verifier.key_id
    assert serialization.load_pem_public_key(body["release_key"]["public_pem"].encode())
    return verifier, TrustedOfferKeys().with_certified(verifier, body["offer_keys"])


def test_keys_lists_release_key_and_certified_offer_keys(server: Running) -> None:
    assert server.get("/keys").json()["offer_keys"] == []
    _, first = ensure_offer_key(server.dirs.keys_dir, load_signer(server.dirs.keys_dir))
    verifier, trusted = _trusted_from_endpoint(server)
    assert first in trusted
    new, _ = rotate_offer_key(server.dirs.keys_dir, load_signer(server.dirs.keys_dir), 3600)
    body = server.get("/keys").json()
    assert {k["key_id"]: k["status"] for k in body["offer_keys"]} == {
        first: "grace",
        new: "current",
    }
    # A certificate altered in transit is not trusted.
    forged = [{**k, "not_after": k["not_after"] + 10**6} for k in body["offer_keys"]]
    assert not TrustedOfferKeys().with_certified(verifier, forged).keys


def test_rest_offers_are_sealed_once_an_offer_key_exists(server: Running) -> None:
    ensure_offer_key(server.dirs.keys_dir, load_signer(server.dirs.keys_dir))
    response = server.post(
        "/check-update",
        json={"device_id": "dev-7", "build_id": "b1", "version": "1.0.0", "request_id": "n-1"},
    )
    assert response.status_code == 200, response.text
    offer = parse_offer(response.content)
    assert isinstance(offer, UpToDate)
    verifier, trusted = _trusted_from_endpoint(server)
    checker = OfferChecker(verifier, "dev-7", "1.0.0", offer_keys=trusted, clock=time.time)
    envelope = checker.check_envelope(offer, "n-1")
    assert envelope is not None and envelope.device_id == "dev-7" and envelope.nonce == "n-1"
