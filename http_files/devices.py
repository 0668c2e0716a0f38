"""``POST /check-update``: the seed's pull-style update check, answered like an MQTT offer."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from http_files.deps import CatalogDep, ServicesDep
from http_files.errors import status_for_code
from http_files.schemas import CheckUpdateRequest, ErrorBody
from ota_core.models import Announcement, ErrorReply, UpdateOffer, UpToDate
from ota_core.policy import DeviceFacts
from ota_core.store.devices import AnnouncementSeen

router = APIRouter(tags=["devices"])


@router.post(
    "/check-update",
    summary="Ask whether a newer release exists for a device",
    description=(
        "Answers with exactly the body the bridge publishes on the device's MQTT offer topic: "
        "`update-available` (with `url`, `checksum`, `signature`, `size`, `manifest`, "
        "`manifest_signature`, `key_id`) or `up-to-date`. An unknown `build_id` without a "
        "`version` is a 404 with an error body. The check is recorded in the device registry."
    ),
    response_model=UpdateOffer | UpToDate,
    response_model_exclude_none=True,
    responses={404: {"model": ErrorBody}, 400: {"model": ErrorBody}},
)
def check_update(
    body: CheckUpdateRequest, services: ServicesDep, catalog: CatalogDep
) -> JSONResponse:
    facts = DeviceFacts(
        device_id=body.device_id,
        build_id=body.build_id,
        version=body.version,
        hardware=body.hardware,
        channel=body.channel,
    )
    # A stat of the offer keyring: offers sealed here match the bridge's after a key rotation.
    services.refresh_offer_key()
    offer = services.offers.for_device(catalog, facts, body.request_id)
    announcement = Announcement(
        build_id=body.build_id,
        version=body.version,
        hardware=body.hardware,
        channel=body.channel,
        request_id=body.request_id,
        device_id=body.device_id,
    )
    offered = offer.build_id if isinstance(offer, UpdateOffer) else None
    # A device that asks is a device we have seen, even when its build is unknown.
    services.registry.apply(
        [AnnouncementSeen(body.device_id, announcement, offered, datetime.now(UTC))]
    )
    status = status_for_code(offer.error) if isinstance(offer, ErrorReply) else 200
    return JSONResponse(offer.to_dict(), status_code=status)
