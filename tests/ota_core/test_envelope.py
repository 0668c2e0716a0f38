"""Device-bound, expiring offers: every check in the order the device runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ota_core.envelope import OfferEnvelope, OfferKeyCertificate, OfferSigner, TrustedOfferKeys
from ota_core.errors import VerificationFailed
from ota_core.keyfiles import (
    ensure_offer_key,
    ensure_release_keys,
    load_offer_signer,
    load_signer,
    published_offer_keys,
    rotate_offer_key,
)
from ota_core.models import UpdateOffer, UpToDate
from ota_core.offers import OfferBuilder
from ota_core.signing import ReleaseSigner
from ota_core.verify import OfferChecker

from .conftest import make_release

T0 = 1_800_000_000
PACKAGE_SHA = hashlib.sha256(b"pkg").hexdigest()


@pytest.fixture(scope="module")
def offer_signer() -> OfferSigner:
    return OfferSigner.generate()


def builder(offer_signer: OfferSigner, at: int = T0, ttl: int = 3600) -> OfferBuilder:
    return OfferBuilder("", offer_signer, ttl, clock=lambda: at)


def sealed_offer(signer: ReleaseSigner, offer_signer: OfferSigner, **kw: object) -> UpdateOffer:
    release = make_release(signer, "b2", "2.0.0", 5, sha256=PACKAGE_SHA, size=3, hardware="hw")
    device = str(kw.pop("device_id", "dev-a"))
    nonce = kw.pop("nonce", "nonce-1")
    at = int(kw.pop("at", T0))  # type: ignore[call-overload]
    return builder(offer_signer, at).update_offer(release, device, nonce)  # type: ignore[arg-type]


def checker(signer: ReleaseSigner, offer_signer: OfferSigner, **kw: object) -> OfferChecker:
    args: dict[str, object] = {
        "device_id": "dev-a",
        "installed_version": "1.0.0",
        "hardware": "hw",
        "installed_counter": 4,
        "offer_keys": TrustedOfferKeys.pinned([offer_signer.public_hex]),
        "clock": lambda: T0 + 10,
    } | kw
    return OfferChecker(signer.verifier, **args)  # type: ignore[arg-type]


def reason_for(check: OfferChecker, offer: UpdateOffer, nonce: str | None = "nonce-1") -> str:
    with pytest.raises(VerificationFailed) as caught:
        check.check(offer, nonce)
    return caught.value.reason


def test_sealed_offer_verifies(signer: ReleaseSigner, offer_signer: OfferSigner) -> None:
    offer = sealed_offer(signer, offer_signer)
    assert offer.envelope is not None
    envelope = OfferEnvelope.from_bytes(offer.envelope.encode())
    assert envelope.device_id == "dev-a" and envelope.nonce == "nonce-1"
    assert envelope.manifest_sha256 == hashlib.sha256(offer.manifest.encode()).hexdigest()
    assert envelope.expires_at - envelope.issued_at == 3600
    assert checker(signer, offer_signer).check(offer, "nonce-1").build_id == "b2"


def _flip_hex(value: str) -> str:
    return ("1" if value[0] == "0" else "0") + value[1:]


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("envelope", "envelope-signature"),
        ("envelope_signature", "envelope-signature"),
        ("device_id", "wrong-device"),
        ("request_id", "wrong-request"),
        ("manifest", "manifest-hash"),
        ("manifest_signature", "manifest-signature"),
        ("checksum", "manifest-mismatch"),
        ("version", "manifest-mismatch"),
        ("build_id", "manifest-mismatch"),
        ("size", "manifest-mismatch"),
        ("key_id", "manifest-mismatch"),
        ("signature", "checksum-signature"),
        ("url", None),  # not signed: integrity comes from the signed size and hash
    ],
)
def test_each_field_tampered_alone(
    signer: ReleaseSigner, offer_signer: OfferSigner, field: str, reason: str | None
) -> None:
    offer = sealed_offer(signer, offer_signer)
    original = getattr(offer, field)
    tampered: object
    if field == "envelope":
        tampered = original.replace('"dev-a"', '"dev-b"')
    elif field == "manifest":
        tampered = original.replace('"hw"', '"hx"')
    elif field in {"envelope_signature", "manifest_signature", "signature", "checksum"}:
        tampered = _flip_hex(original)
    elif field == "size":
        tampered = original + 1
    elif field == "version":
        tampered = "2.0.1"
    elif field == "key_id":
        tampered = "f" * 16
    elif field == "url":
        tampered = "/packages/evil.bin"
    else:
        tampered = original + "x"
    changed = offer.model_copy(update={field: tampered})
    if reason is None:
        checker(signer, offer_signer).check(changed, "nonce-1")
    else:
        assert reason_for(checker(signer, offer_signer), changed) == reason


def test_offer_for_device_a_is_refused_by_device_b(
    signer: ReleaseSigner, offer_signer: OfferSigner
) -> None:
    offer_for_a = sealed_offer(signer, offer_signer, device_id="dev-a")
    as_b = checker(signer, offer_signer, device_id="dev-b")
    assert reason_for(as_b, offer_for_a) == "wrong-device"
    # Relabelling the unsigned device_id does not help: the envelope still names A.
    relabelled = offer_for_a.model_copy(update={"device_id": "dev-b"})
    assert reason_for(as_b, relabelled) == "wrong-device"


def test_replayed_old_offer_is_refused(signer: ReleaseSigner, offer_signer: OfferSigner) -> None:
    old = sealed_offer(signer, offer_signer, nonce="nonce-0")
    assert reason_for(checker(signer, offer_signer), old, nonce="nonce-1") == "wrong-request"


def test_expired_and_future_offers_are_refused(
    signer: ReleaseSigner, offer_signer: OfferSigner
) -> None:
    offer = sealed_offer(signer, offer_signer)
    late = checker(signer, offer_signer, clock=lambda: T0 + 3600 + 301)
    assert reason_for(late, offer) == "expired"
    within_skew = checker(signer, offer_signer, clock=lambda: T0 + 3600 + 299)
    within_skew.check(offer, "nonce-1")
    early = checker(signer, offer_signer, clock=lambda: T0 - 1000)
    assert reason_for(early, offer) == "not-yet-valid"


def test_missing_envelope_and_unknown_key(signer: ReleaseSigner, offer_signer: OfferSigner) -> None:
    offer = sealed_offer(signer, offer_signer)
    stripped = offer.model_copy(update={"envelope": None, "envelope_signature": None})
    assert reason_for(checker(signer, offer_signer), stripped) == "envelope-signature"
    stranger = OfferSigner.generate()
    forged = sealed_offer(signer, stranger)
    assert reason_for(checker(signer, offer_signer), forged) == "envelope-signature"


def test_rollback_by_counter_even_when_version_is_newer(
    signer: ReleaseSigner, offer_signer: OfferSigner
) -> None:
    offer = sealed_offer(signer, offer_signer)  # counter 5
    assert reason_for(checker(signer, offer_signer, installed_counter=5), offer) == "rollback"
    assert reason_for(checker(signer, offer_signer, hardware="other"), offer) == "hardware-mismatch"


def test_push_offers_without_nonce(signer: ReleaseSigner, offer_signer: OfferSigner) -> None:
    pushed = sealed_offer(signer, offer_signer, nonce=None)
    checker(signer, offer_signer).check(pushed, None)
    checker(signer, offer_signer).check(pushed, "nonce-1")  # a push may cross an announcement
    strict = checker(signer, offer_signer, accept_push=False)
    assert reason_for(strict, pushed) == "wrong-request"


def test_up_to_date_replies_are_sealed_too(
    signer: ReleaseSigner, offer_signer: OfferSigner
) -> None:
    reply = builder(offer_signer).seal(
        UpToDate(device_id="dev-a", request_id="nonce-1", build_id="b2", version="2.0.0")
    )
    envelope = checker(signer, offer_signer).check_envelope(reply, "nonce-1")
    assert envelope is not None and envelope.status == "up-to-date"
    forged = reply.model_copy(
        update={"envelope_signature": _flip_hex(reply.envelope_signature or "00")}
    )
    with pytest.raises(VerificationFailed):
        checker(signer, offer_signer).check_envelope(forged, "nonce-1")


def test_certified_keys_from_the_keys_endpoint(
    signer: ReleaseSigner, offer_signer: OfferSigner
) -> None:
    cert, certificate = OfferKeyCertificate.issue(signer, offer_signer, T0 + 10_000)
    good = {**cert.model_dump(), "certificate": certificate}
    bad_cert = {**good, "certificate": _flip_hex(certificate)}
    impostor = OfferSigner.generate()
    swapped = {**good, "public_key": impostor.public_hex}
    trusted = TrustedOfferKeys().with_certified(signer.verifier, [bad_cert, swapped])
    assert offer_signer.key_id not in trusted and impostor.key_id not in trusted
    trusted = TrustedOfferKeys().with_certified(signer.verifier, [good])
    assert offer_signer.key_id in trusted
    offer = sealed_offer(signer, offer_signer)
    checker(signer, offer_signer, offer_keys=trusted).check(offer, "nonce-1")
    after_cert = checker(signer, offer_signer, offer_keys=trusted, clock=lambda: T0 + 10_001)
    assert reason_for(after_cert, offer) == "envelope-signature"


def test_keyring_rotation_keeps_old_key_for_grace(tmp_path: Path) -> None:
    ensure_release_keys(tmp_path)
    release_signer = load_signer(tmp_path)
    created, first = ensure_offer_key(tmp_path, release_signer)
    assert created and (tmp_path / f"offer-{first}.pem").stat().st_mode & 0o777 == 0o600
    assert ensure_offer_key(tmp_path, release_signer) == (False, first)
    new, retired = rotate_offer_key(tmp_path, release_signer, grace_seconds=3600)
    assert retired == [first] and new != first
    signer = load_offer_signer(tmp_path)
    assert signer is not None and signer.key_id == new
    assert not (tmp_path / f"offer-{first}.pem").exists()  # nothing can sign with it any more
    published = {e["key_id"]: e for e in published_offer_keys(tmp_path)}
    assert published[first]["status"] == "grace" and published[new]["status"] == "current"
    trusted = TrustedOfferKeys().with_certified(release_signer.verifier, published.values())
    assert first in trusted and new in trusted
    later = published_offer_keys(tmp_path, now=int(published[first]["not_after"]) + 1)
    assert [e["key_id"] for e in later] == [new]
    keyring = json.loads((tmp_path / "offer-keys.json").read_text())
    assert "private" not in json.dumps(keyring).lower()
