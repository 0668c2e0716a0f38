"""Release signatures over bytes (no file or network I/O).

The release key is RSA-2048. Two things are signed with it, both with PKCS#1 v1.5
over SHA-256, which is exactly what the seed's device example verifies:

* the checksum: the ASCII bytes of the package's lowercase SHA-256 hex digest
  (the seed's ``signature`` field);
* the manifest: the canonical JSON bytes of :class:`~ota_core.models.ReleaseManifest`.

``key_id`` is the first 16 hex characters of the SHA-256 of the public key's DER
(SubjectPublicKeyInfo) encoding, so a device can tell which key it needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ota_core.errors import KeyMaterialError, VerificationFailed

RSA_KEY_BITS = 2048


def key_id_of(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def generate_release_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def private_key_to_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_to_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class ReleaseSigner:
    """Signs with the release private key. Built from PEM bytes by :meth:`from_pem`."""

    private_key: rsa.RSAPrivateKey

    @classmethod
    def from_pem(cls, pem: bytes) -> ReleaseSigner:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise KeyMaterialError(f"release private key is not a readable PEM key: {e}") from e
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyMaterialError("release private key must be RSA")
        return cls(key)

    @property
    def key_id(self) -> str:
        return key_id_of(self.private_key.public_key())

    @property
    def verifier(self) -> ReleaseVerifier:
        return ReleaseVerifier(self.private_key.public_key())

    def sign(self, data: bytes) -> str:
        """Hex signature of ``data`` (PKCS#1 v1.5, SHA-256)."""
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256()).hex()

    def sign_checksum(self, sha256_hex: str) -> str:
        return self.sign(sha256_hex.encode("ascii"))


@dataclass(frozen=True)
class ReleaseVerifier:
    """Checks release signatures with the public key (``keys/public.pem``)."""

    public_key: rsa.RSAPublicKey

    @classmethod
    def from_pem(cls, pem: bytes) -> ReleaseVerifier:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as e:
            raise KeyMaterialError(f"release public key is not a readable PEM key: {e}") from e
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyMaterialError("release public key must be RSA")
        return cls(key)

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def verify(self, data: bytes, signature_hex: str, reason: str) -> None:
        """Raise :class:`VerificationFailed` (with ``reason``) unless the signature holds."""
        try:
            signature = bytes.fromhex(signature_hex)
            self.public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature) as e:
            raise VerificationFailed(
                reason, "signature does not verify with the release key"
            ) from e
