"""``GET /keys``: the public keys a device needs, with their key ids.

The release key's public PEM is the device's root of trust. Each offer key is
listed with a certificate — the release key's signature over
``{"key_id", "not_after", "public_key", "purpose"}`` in canonical JSON — so a
device that pins only ``public.pem`` can adopt a rotated offer key safely even
though this endpoint is served over plain HTTP.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from http_files.deps import ServicesDep
from ota_core.keyfiles import published_offer_keys

router = APIRouter(tags=["device"])


class ReleaseKeyInfo(BaseModel):
    key_id: str
    algorithm: str = "RSA-2048 PKCS#1 v1.5 SHA-256"
    public_pem: str


class OfferKeyInfo(BaseModel):
    key_id: str
    algorithm: str = "Ed25519"
    public_key: str
    not_after: int
    purpose: str
    certificate: str
    status: str


class KeysBody(BaseModel):
    release_key: ReleaseKeyInfo
    offer_keys: list[OfferKeyInfo]


@router.get(
    "/keys",
    summary="Public keys: the release key and the current and in-grace offer keys",
    response_model=KeysBody,
)
def keys(services: ServicesDep) -> KeysBody:
    signer = services.releases.signer
    public_pem = services.public_key_path.read_text()
    return KeysBody(
        release_key=ReleaseKeyInfo(key_id=signer.key_id, public_pem=public_pem),
        offer_keys=[
            OfferKeyInfo(**entry) for entry in published_offer_keys(services.settings.keys_dir)
        ],
    )
