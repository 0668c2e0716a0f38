"""Key material on disk.

* ``keys/private.pem`` (0600) and ``keys/public.pem``: the RSA release key.
* ``keys/offer-<key_id>.pem`` (0600): the online Ed25519 offer key(s).
* ``keys/offer-keys.json``: the offer keyring, public halves with their
  release-key certificates, current and in-grace keys.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ota_core.envelope import OfferKeyCertificate, OfferSigner
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


# --- the online offer key (Ed25519) ----------------------------------------------------

OFFER_KEYRING_NAME = "offer-keys.json"
DEFAULT_OFFER_KEY_VALIDITY_SECONDS = 365 * 24 * 3600


def _offer_private_path(keys_dir: Path, key_id: str) -> Path:
    return keys_dir / f"offer-{key_id}.pem"


def _read_keyring(keys_dir: Path) -> list[dict[str, Any]]:
    path = keys_dir / OFFER_KEYRING_NAME
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KeyMaterialError(f"cannot read the offer keyring {path}: {e}") from e
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise KeyMaterialError(f"offer keyring {path} has no 'keys' list")
    return keys


def _write_keyring(keys_dir: Path, entries: list[dict[str, Any]]) -> None:
    # Public data only, but written atomically so a reader never sees half a file.
    path = keys_dir / OFFER_KEYRING_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"keys": entries}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _new_offer_entry(
    keys_dir: Path, release_signer: ReleaseSigner, now: int, validity_seconds: int
) -> dict[str, Any]:
    signer = OfferSigner.generate()
    write_private_file(_offer_private_path(keys_dir, signer.key_id), signer.to_pem())
    cert, certificate = OfferKeyCertificate.issue(release_signer, signer, now + validity_seconds)
    return {
        **cert.model_dump(mode="json"),
        "certificate": certificate,
        "created_at": now,
        "retired_at": None,
    }


def ensure_offer_key(
    keys_dir: Path,
    release_signer: ReleaseSigner,
    validity_seconds: int = DEFAULT_OFFER_KEY_VALIDITY_SECONDS,
) -> tuple[bool, str]:
    """Create the first offer key if the keyring has no current one. Returns (created, key_id)."""
    entries = _read_keyring(keys_dir)
    current = [e for e in entries if e.get("retired_at") is None]
    if current:
        return False, str(current[-1]["key_id"])
    entry = _new_offer_entry(keys_dir, release_signer, int(time.time()), validity_seconds)
    _write_keyring(keys_dir, [*entries, entry])
    return True, str(entry["key_id"])


def rotate_offer_key(
    keys_dir: Path,
    release_signer: ReleaseSigner,
    grace_seconds: int,
    validity_seconds: int = DEFAULT_OFFER_KEY_VALIDITY_SECONDS,
) -> tuple[str, list[str]]:
    """Make a new current offer key; keep the old ones verifiable for ``grace_seconds``.

    The old keys' certificates are re-issued to end with the grace period, and
    their private halves are deleted: nothing signs with them any more.
    Returns (new key id, retired key ids).
    """
    now = int(time.time())
    entries = _read_keyring(keys_dir)
    retired: list[str] = []
    for entry in entries:
        if entry.get("retired_at") is None:
            entry["retired_at"] = now
            entry["not_after"] = min(int(entry["not_after"]), now + grace_seconds)
            cert = OfferKeyCertificate(
                key_id=entry["key_id"], public_key=entry["public_key"], not_after=entry["not_after"]
            )
            entry["certificate"] = release_signer.sign(cert.to_bytes())
            _offer_private_path(keys_dir, entry["key_id"]).unlink(missing_ok=True)
            retired.append(entry["key_id"])
    new = _new_offer_entry(keys_dir, release_signer, now, validity_seconds)
    # Drop keys whose grace period ended long ago: the list only grows by rotations.
    kept = [e for e in entries if int(e["not_after"]) >= now]
    _write_keyring(keys_dir, [*kept, new])
    return str(new["key_id"]), retired


def load_offer_signer(keys_dir: Path) -> OfferSigner | None:
    """The current offer key, or None when the keyring has none (offers go unsealed)."""
    current = [e for e in _read_keyring(keys_dir) if e.get("retired_at") is None]
    if not current:
        return None
    path = _offer_private_path(keys_dir, str(current[-1]["key_id"]))
    try:
        return OfferSigner.from_pem(path.read_bytes())
    except OSError as e:
        raise KeyMaterialError(f"cannot read the offer key {path}: {e.strerror}") from e


def published_offer_keys(keys_dir: Path, now: int | None = None) -> list[dict[str, Any]]:
    """Offer keys still valid, each with its release-key certificate (``GET /keys``)."""
    moment = int(time.time()) if now is None else now
    published = []
    for entry in _read_keyring(keys_dir):
        if int(entry["not_after"]) < moment:
            continue
        published.append(
            {
                "key_id": entry["key_id"],
                "public_key": entry["public_key"],
                "not_after": entry["not_after"],
                "purpose": entry.get("purpose", "offer"),
                "certificate": entry["certificate"],
                "status": "current" if entry.get("retired_at") is None else "grace",
            }
        )
    return published
