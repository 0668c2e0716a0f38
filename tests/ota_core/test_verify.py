import hashlib
from typing import Any

import pytest

from ota_core.errors import VerificationFailed
from ota_core.models import UpdateOffer
from ota_core.offers import OfferBuilder
from ota_core.signing import ReleaseSigner
from ota_core.verify import OfferChecker, PackageDigest

from .conftest import make_release

PACKAGE = b"firmware image " * 1000
SHA = hashlib.sha256(PACKAGE).hexdigest()


@pytest.fixture
def offer(signer: ReleaseSigner) -> UpdateOffer:
    release = make_release(
        signer, "b2", "2.0.0", 2, sha256=SHA, size=len(PACKAGE), hardware="board-a"
    )
    return OfferBuilder().update_offer(release, "dev-1", "req-1")


def checker(signer: ReleaseSigner, **kw: Any) -> OfferChecker:
    args = {"device_id": "dev-1", "installed_version": "1.0.0", "hardware": "board-a"} | kw
    return OfferChecker(signer.verifier, **args)


def refused(check: OfferChecker, offer: UpdateOffer, request_id: str | None = "req-1") -> str:
    with pytest.raises(VerificationFailed) as caught:
        check.check(offer, request_id)
    return caught.value.reason


def test_genuine_offer_passes(signer: ReleaseSigner, offer: UpdateOffer) -> None:
    assert checker(signer).check(offer, "req-1").sha256 == SHA


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("device_id", "dev-2", "wrong-device"),
        ("request_id", "req-other", "wrong-request"),
        ("manifest_signature", "00" * 256, "manifest-signature"),
        ("checksum", "0" * 64, "manifest-mismatch"),
        ("version", "3.0.0", "manifest-mismatch"),
        ("size", 1, "manifest-mismatch"),
        ("build_id", "b3", "manifest-mismatch"),
        ("signature", "00" * 256, "checksum-signature"),
    ],
)
def test_each_tampered_field_is_refused(
    signer: ReleaseSigner, offer: UpdateOffer, field: str, value: object, reason: str
) -> None:
    assert refused(checker(signer), offer.model_copy(update={field: value})) == reason


def test_manifest_edited_is_refused(signer: ReleaseSigner, offer: UpdateOffer) -> None:
    edited = offer.model_copy(update={"manifest": offer.manifest.replace("board-a", "board-b")})
    assert refused(checker(signer), edited) == "manifest-signature"


def test_offer_signed_by_another_key_is_refused(
    other_signer: ReleaseSigner, signer: ReleaseSigner
) -> None:
    release = make_release(
        other_signer, "b2", "2.0.0", 2, sha256=SHA, size=len(PACKAGE), hardware="board-a"
    )
    forged = OfferBuilder().update_offer(release, "dev-1", "req-1")
    assert refused(checker(signer), forged) == "manifest-signature"


def test_rollback_and_hardware(signer: ReleaseSigner, offer: UpdateOffer) -> None:
    assert refused(checker(signer, installed_version="2.0.0"), offer) == "rollback"
    assert refused(checker(signer, installed_version="3.1"), offer) == "rollback"
    assert refused(checker(signer, hardware="board-b"), offer) == "hardware-mismatch"
    assert refused(checker(signer, hardware=None), offer) == "hardware-mismatch"


def test_package_digest_checks_size_and_hash() -> None:
    ok = PackageDigest(len(PACKAGE), SHA)
    for i in range(0, len(PACKAGE), 4096):
        ok.update(PACKAGE[i : i + 4096])
    assert ok.finish() == SHA

    too_long = PackageDigest(len(PACKAGE), SHA)
    with pytest.raises(VerificationFailed) as caught:
        too_long.update(PACKAGE + b"x")
    assert caught.value.reason == "size-exceeded"

    short = PackageDigest(len(PACKAGE), SHA)
    short.update(PACKAGE[:-1])
    with pytest.raises(VerificationFailed) as caught:
        short.finish()
    assert caught.value.reason == "size-mismatch"

    corrupt = PackageDigest(len(PACKAGE), SHA)
    corrupt.update(PACKAGE[:-1] + b"!")
    with pytest.raises(VerificationFailed) as caught:
        corrupt.finish()
    assert caught.value.reason == "checksum-mismatch"
