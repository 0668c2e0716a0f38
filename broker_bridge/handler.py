"""The bridge's message logic, free of I/O: one MQTT message in, one decision out.

:class:`BridgeHandler` turns a device's message (topic + payload bytes) into a
:class:`HandlerResult`: the reply to publish (if any), the registry event to
write behind (if any), and what happened, for the log. It never raises: every
bad input becomes a result, so the MQTT edge can stay a thin loop.

How each kind of message is answered:

* ``…/announce`` → always one reply on the device's ``…/offer`` topic:
  ``update-available``, ``up-to-date``, or ``error`` (unknown build, and every
  malformed payload: not UTF-8, not JSON, too large, nested too deeply, wrong
  types, a ``device_id`` that contradicts the topic). A readable ``request_id``
  is copied into error replies on a best-effort basis so the device can match
  them. A well-formed announcement is recorded in the registry even when its
  build is unknown: that is how an operator finds devices on unknown builds.
* ``…/status`` → no reply; a valid report becomes a registry event. A malformed
  report is logged and dropped. It is *not* answered on the offer topic: that
  topic carries answers to announcements only, and a device waiting for its
  offer must never take a complaint about an earlier status report for it.
* a topic that is not ours, or whose device id is invalid → logged, no reply:
  there is no valid offer topic to answer on.

Every reply, error replies included, is built by the
:class:`~ota_core.offers.OfferBuilder`, so it is sealed in a device-bound
envelope whenever an offer key exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ota_core.catalog import Catalog
from ota_core.errors import InvalidInput, OtaError
from ota_core.models import (
    Announcement,
    ErrorReply,
    Offer,
    StatusReport,
    UpdateOffer,
    load_json_object,
)
from ota_core.offers import OfferBuilder, facts_of
from ota_core.policy import decide
from ota_core.store.devices import AnnouncementSeen, RegistryEvent, StatusSeen
from ota_core.topics import DeviceTopic, TopicKind, TopicScheme

#: What a device is told when the bridge itself failed (the log gets the real reason).
_INTERNAL_DETAIL = "the bridge could not process this announcement"
# Same alphabet as ota_core.identifiers.RequestId: printable ASCII, no spaces.
_REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")


class Outcome(StrEnum):
    """What the handler did with one message (the ``outcome=`` log field)."""

    UPDATE_OFFERED = "update-offered"
    UP_TO_DATE = "up-to-date"
    ANNOUNCE_REJECTED = "announce-rejected"  # answered with an error reply
    STATUS_RECORDED = "status-recorded"
    STATUS_REJECTED = "status-rejected"  # logged and dropped, no reply
    DROPPED = "dropped"  # topic not ours or device id invalid: nobody to answer


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message for the MQTT edge to publish (QoS 1, not retained)."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class HandlerResult:
    outcome: Outcome
    device_id: str | None = None
    request_id: str | None = None
    reply: OutgoingMessage | None = None
    event: RegistryEvent | None = None
    #: OtaError code for rejections and error replies, e.g. ``unknown-build``.
    error: str | None = None
    #: Human-readable reason for rejections; never echoes the raw payload.
    detail: str | None = None
    #: The build offered (update-offered) or confirmed current (up-to-date).
    build_id: str | None = None

    @property
    def is_error(self) -> bool:
        return self.error is not None


def readable_request_id(data: dict[str, Any] | None) -> str | None:
    """The payload's ``request_id`` when it is a valid one, else None (best effort)."""
    if data is None:
        return None
    value = data.get("request_id")
    if isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value):
        return value
    return None


class BridgeHandler:
    """Sans-IO core of the bridge. Thread-safe: its only state is swapped atomically.

    ``catalog`` is called once per announcement to get the current snapshot, so
    a release added elsewhere is used as soon as the caller's cache refreshes.
    """

    def __init__(
        self,
        topics: TopicScheme,
        offers: OfferBuilder,
        catalog: Callable[[], Catalog],
        max_message_bytes: int,
    ) -> None:
        self._topics = topics
        self._offers = offers
        self._catalog = catalog
        self._max_bytes = max_message_bytes

    @property
    def offers(self) -> OfferBuilder:
        return self._offers

    def set_offers(self, offers: OfferBuilder) -> None:
        """Use another offer builder from now on (a rotated offer key). Thread-safe."""
        self._offers = offers

    def handle(self, topic: str, payload: bytes, now: datetime) -> HandlerResult:
        """Decide what to do with one message. Never raises."""
        try:
            target = self._topics.parse(topic)
        except OtaError as e:
            return HandlerResult(Outcome.DROPPED, error=e.code, detail=e.detail)
        except Exception as e:  # defensive: the MQTT loop must survive anything
            return HandlerResult(Outcome.DROPPED, error=OtaError.code, detail=repr(e))
        if target.kind is TopicKind.ANNOUNCE:
            return self._announce(target, payload, now)
        if target.kind is TopicKind.STATUS:
            return self._status(target, payload, now)
        return HandlerResult(
            Outcome.DROPPED,
            device_id=target.device_id,
            error="bad-request",
            detail=f"devices do not publish on {target.kind.value} topics",
        )

    # -- announcements ---------------------------------------------------

    def _announce(self, target: DeviceTopic, payload: bytes, now: datetime) -> HandlerResult:
        device_id = target.device_id
        data: dict[str, Any] | None = None
        try:
            data = load_json_object(payload, "announcement", self._max_bytes)
            _check_device_matches(data, device_id, "announcement")
            announcement = Announcement.from_mapping(data, "announcement")
            facts = facts_of(device_id, announcement)
            offers = self._offers
            try:
                decision = decide(self._catalog(), facts)
            except OtaError as e:  # from the policy (unknown build): answered and recorded
                error = offers.error(device_id, announcement.request_id, e)
                return self._answer(target, announcement, error, now)
            release = decision.release
            if release is None:
                up_to_date = offers.up_to_date(facts, announcement.request_id, decision)
                return self._answer(target, announcement, up_to_date, now)
            # The hot path: an update offer, serialised from the release's template.
            payload = offers.update_offer_bytes(release, device_id, announcement.request_id)
            return HandlerResult(
                Outcome.UPDATE_OFFERED,
                device_id=device_id,
                request_id=announcement.request_id,
                reply=OutgoingMessage(_offer_topic(target), payload),
                event=AnnouncementSeen(device_id, announcement, release.build_id, now),
                build_id=release.build_id,
            )
        except OtaError as e:
            return self._reject(target, readable_request_id(data), e)
        except Exception as e:  # defensive: a bug must cost one reply, not the bridge
            return self._reject(
                target, readable_request_id(data), OtaError(_INTERNAL_DETAIL), repr(e)
            )

    def _answer(
        self, target: DeviceTopic, announcement: Announcement, offer: Offer, now: datetime
    ) -> HandlerResult:
        reply = OutgoingMessage(_offer_topic(target), offer.to_bytes())
        event = AnnouncementSeen(
            target.device_id,
            announcement,
            offer.build_id if isinstance(offer, UpdateOffer) else None,
            now,
        )
        if isinstance(offer, ErrorReply):
            # From the policy (unknown build): still a real device on a real build, so
            # it is recorded as well as answered.
            outcome, error, detail, build = (
                Outcome.ANNOUNCE_REJECTED, offer.error, offer.detail, None
            )
        else:
            updating = isinstance(offer, UpdateOffer)
            outcome = Outcome.UPDATE_OFFERED if updating else Outcome.UP_TO_DATE
            error, detail, build = None, None, offer.build_id
        return HandlerResult(
            outcome,
            device_id=target.device_id,
            request_id=announcement.request_id,
            reply=reply,
            event=event,
            error=error,
            detail=detail,
            build_id=build,
        )

    def _reject(
        self,
        target: DeviceTopic,
        request_id: str | None,
        error: OtaError,
        log_detail: str | None = None,
    ) -> HandlerResult:
        try:
            reply = self._offers.error(target.device_id, request_id, error)  # sealed if keyed
        except Exception:  # sealing failed: an unsealed reply still tells the device why
            reply = ErrorReply(
                device_id=target.device_id,
                request_id=request_id,
                error=error.code,
                detail=error.detail,
            )
        return HandlerResult(
            Outcome.ANNOUNCE_REJECTED,
            device_id=target.device_id,
            request_id=request_id,
            reply=OutgoingMessage(_offer_topic(target), reply.to_bytes()),
            error=error.code,
            detail=log_detail or error.detail,
        )

    # -- status reports --------------------------------------------------

    def _status(self, target: DeviceTopic, payload: bytes, now: datetime) -> HandlerResult:
        device_id = target.device_id
        data: dict[str, Any] | None = None
        try:
            data = load_json_object(payload, "status report", self._max_bytes)
            _check_device_matches(data, device_id, "status report")
            report = StatusReport.from_mapping(data, "status report")
        except OtaError as e:
            return _status_rejected(device_id, readable_request_id(data), e.code, e.detail)
        except Exception as e:  # defensive, as above
            return _status_rejected(
                device_id, readable_request_id(data), OtaError.code, repr(e)
            )
        return HandlerResult(
            Outcome.STATUS_RECORDED,
            device_id=device_id,
            request_id=report.request_id,
            event=StatusSeen(device_id, report, now),
            build_id=report.build_id,
        )


def _offer_topic(target: DeviceTopic) -> str:
    # The device id was validated when the incoming topic was parsed; no need to again.
    return str(DeviceTopic(target.prefix, target.device_id, TopicKind.OFFER))


def _status_rejected(
    device_id: str, request_id: str | None, code: str, detail: str
) -> HandlerResult:
    return HandlerResult(
        Outcome.STATUS_REJECTED,
        device_id=device_id,
        request_id=request_id,
        error=code,
        detail=detail,
    )


def _check_device_matches(data: dict[str, Any], device_id: str, what: str) -> None:
    """A payload may repeat its device id, but never name another device than its topic."""
    if "device_id" in data and data["device_id"] != device_id:
        raise InvalidInput(f"{what}: device_id in the payload does not match the topic")

