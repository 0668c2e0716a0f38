import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from ota_core.errors import KeyMaterialError, VerificationFailed
from ota_core.models import ReleaseManifest
from ota_core.signing import ReleaseSigner, ReleaseVerifier, public_key_to_pem

from .conftest import make_release


def test_checksum_signature_passes_the_seed_devices_own_check(signer: ReleaseSigner) -> None:
    """The seed's device verifies PKCS#1 v1.5/SHA-256 over the checksum's hex text."""
    checksum = hashlib.sha256(b"firmware").hexdigest()
    release = make_release(signer, "b1", "1.0.0", 1, sha256=checksum)
    public_pem = public_key_to_pem(signer.private_key.public_key())
    public_key = serialization.load_pem_public_key(public_pem)
    public_key.verify(  # type: ignore[union-attr,call-arg]
        bytes.fromhex(release.signature),
        checksum.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),  # type: ignore[arg-type]
    )


def test_manifest_signature_covers_the_exact_bytes(signer: ReleaseSigner) -> None:
    release = make_release(signer, "b1", "1.0.0", 1, hardware="board-a", channel="stable")
    signer.verifier.verify(
        release.manifest.encode(), release.manifest_signature, "manifest-signature"
    )
    manifest = ReleaseManifest.from_bytes(release.manifest.encode())
    assert (manifest.build_id, manifest.version, manifest.hardware, manifest.channel) == (
        "b1",
        "1.0.0",
        "board-a",
        "stable",
    )
    assert manifest.key_id == signer.key_id == release.key_id
    tampered = release.manifest.replace('"1.0.0"', '"9.0.0"').encode()
    with pytest.raises(VerificationFailed) as caught:
        signer.verifier.verify(tampered, release.manifest_signature, "manifest-signature")
    assert caught.value.reason == "manifest-signature"


def test_key_id_is_sha256_of_public_der(signer: ReleaseSigner) -> None:
    der = signer.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signer.key_id == hashlib.sha256(der).hexdigest()[:16]


def test_other_key_does_not_verify(signer: ReleaseSigner, other_signer: ReleaseSigner) -> None:
    release = make_release(other_signer, "b1", "1.0.0", 1)
    with pytest.raises(VerificationFailed):
        signer.verifier.verify(release.sha256.encode(), release.signature, "checksum-signature")


def test_garbage_signature_hex_is_a_verification_failure(signer: ReleaseSigner) -> None:
    with pytest.raises(VerificationFailed):
        signer.verifier.verify(b"x", "zz-not-hex", "checksum-signature")


def test_unreadable_key_material_is_a_clear_error() -> None:
    with pytest.raises(KeyMaterialError):
        ReleaseSigner.from_pem(b"-----BEGIN NONSENSE-----")
    with pytest.raises(KeyMaterialError):
        ReleaseVerifier.from_pem(b"")
