"""Key material on disk: ``keys/private.pem`` (0600) and ``keys/public.pem``."""

from __future__ import annotations

import os
from pathlib import Path

from ota_core.errors import KeyMaterialError
from ota_core.signing import (
    ReleaseSigner,
    ReleaseVerifier,
    generate_release_key,
    private_key_to_pem,
    public_key_to_pem,
)

PRIVATE_KEY_NAME = "private.pem"
PUBLIC_KEY_NAME = "public.pem"


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only, atomically, never loosening an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_release_keys(keys_dir: Path) -> tuple[bool, str]:
    """Generate the release key pair if ``keys_dir`` has none. Returns (created, key_id)."""
    private_path = keys_dir / PRIVATE_KEY_NAME
    public_path = keys_dir / PUBLIC_KEY_NAME
    if private_path.exists():
        signer = load_signer(keys_dir)
        if not public_path.exists():
            public_path.write_bytes(public_key_to_pem(signer.private_key.public_key()))
        return False, signer.key_id
    key = generate_release_key()
    write_private_file(private_path, private_key_to_pem(key))
    public_path.write_bytes(public_key_to_pem(key.public_key()))
    return True, ReleaseSigner(key).key_id


def load_signer(keys_dir: Path) -> ReleaseSigner:
    path = keys_dir / PRIVATE_KEY_NAME
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise KeyMaterialError(
            f"cannot read the release private key {path}: {e.strerror}; run `ota keygen`"
        ) from e
    return ReleaseSigner.from_pem(pem)


def load_verifier(public_key_path: Path) -> ReleaseVerifier:
    try:
        pem = public_key_path.read_bytes()
    except OSError as e:
        raise KeyMaterialError(f"cannot read the public key {public_key_path}: {e.strerror}") from e
    return ReleaseVerifier.from_pem(pem)
