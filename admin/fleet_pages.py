"""Admin pages for the fleet: devices (list, detail with "explain") and rollouts.

Like the releases page: plain HTML forms, no script. Form posts answer a
browser with a 303 (so a reload never repeats an action) or, on failure, the
page again with the error and its status code; scripts get the JSON error body.
Every route is behind the admin router's HTTP Basic and cross-site checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from admin.charts import progress_chart
from admin.fleet import (
    STATUS_CHOICES,
    DeviceFilter,
    DeviceQuery,
    device_record,
    explain_device,
    facet_values,
    find_devices,
)
from admin.page import back_to_page, render_page, wants_html
from admin.rendering import render
from admin.rollouts import (
    ROLLOUT_FORM_FIELDS,
    RolloutStoreDep,
    RolloutView,
    allowed_actions,
    perform,
    rollout_from_form,
)
from http_files.deps import CatalogDep, ServicesDep
from ota_core.errors import InvalidInput, OtaError
from ota_core.rollouts import RolloutState
from ota_core.store.rollouts import INSTALL_STATES, RolloutStore

#: The rollout page reloads itself this often (seconds) while the rollout is live.
ROLLOUT_REFRESH_SECONDS = 5
MAX_LISTED_ROLLOUTS = 200

router = APIRouter(tags=["admin page"])

OptionalFormText = Annotated[str | None, Form()]


def _error(error: OtaError | None) -> dict[str, str] | None:
    return None if error is None else {"code": error.code, "detail": error.detail}


# --- devices ----------------------------------------------------------------------


@router.get("/devices", summary="Admin page: devices, filtered", response_class=HTMLResponse)
def devices_page(
    request: Request,
    services: ServicesDep,
    query: Annotated[DeviceQuery, Depends()],
) -> HTMLResponse:
    typed = query.as_typed()
    error: OtaError | None = None
    try:
        wanted = query.to_filter()
    except InvalidInput as e:
        error, wanted = e, DeviceFilter()
    page = find_devices(services.database, wanted)
    prev_link = next_link = None
    if wanted.offset > 0:
        prev_link = urlencode(wanted.query_params(offset=max(0, wanted.offset - wanted.limit)))
    if page.has_next:
        next_link = urlencode(wanted.query_params(offset=wanted.offset + wanted.limit))
    return render(
        request,
        "devices.html",
        {
            "page": page,
            "typed": typed,
            "filtered": any(typed.values()),
            "statuses": STATUS_CHOICES,
            "facets": facet_values(services.database),
            "prev_link": prev_link,
            "next_link": next_link,
            "error": _error(error),
        },
        status_code=200 if error is None else error.http_status,
        section="devices",
    )


@router.get(
    "/devices/{device_id}",
    summary="Admin page: one device, its installs, history and offer explanation",
    response_class=HTMLResponse,
)
def device_page(
    request: Request, device_id: str, services: ServicesDep, catalog: CatalogDep
) -> HTMLResponse:
    record = device_record(services.registry, device_id)
    return render(
        request,
        "device.html",
        {
            "device": record,
            "explanation": explain_device(catalog, record),
            "installs": services.registry.installs(record.device_id),
            "history": services.registry.history(record.device_id),
            "error": None,
        },
        section="devices",
    )


# --- rollouts ---------------------------------------------------------------------


@router.get("/rollouts", summary="Admin page: every rollout", response_class=HTMLResponse)
def rollouts_page(request: Request, store: RolloutStoreDep, catalog: CatalogDep) -> HTMLResponse:
    rows = []
    for rollout in store.all()[:MAX_LISTED_ROLLOUTS]:
        live = rollout.state in (RolloutState.ACTIVE, RolloutState.PAUSED)
        rows.append(
            {
                "rollout": rollout,
                "release": catalog.by_build.get(rollout.build_id),
                # Counts cost a query each: only for the rollouts still moving.
                "counts": store.stage_counts(rollout) if live else None,
            }
        )
    return render(request, "rollouts.html", {"rows": rows, "error": None}, section="rollouts")


@dataclass(frozen=True)
class StageRow:
    index: int
    percent: float
    reached: bool
    current: bool
    states: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.states.values())


def render_rollout(
    request: Request,
    store: RolloutStore,
    catalog: Any,
    rollout_id: int,
    *,
    error: OtaError | None = None,
    refresh: bool = True,
) -> HTMLResponse:
    view = RolloutView.load(store, catalog, rollout_id)
    rollout = view.rollout
    live = rollout.state in (RolloutState.ACTIVE, RolloutState.PAUSED)
    now = time.time()
    log_times = [e["at"] for e in view.log]
    start = min(log_times, default=rollout.stage_started_at)
    finished = [*log_times, *(t for t, _, _ in view.progress[-1:])]
    end = now if live else max(finished, default=start)
    stage_rows = [
        StageRow(
            index=i,
            percent=pct,
            reached=i <= rollout.stage_index,
            current=i == rollout.stage_index,
            states={s: view.stages[i].get(s, 0) for s in INSTALL_STATES},
        )
        for i, pct in enumerate(rollout.stages)
    ]
    return render(
        request,
        "rollout.html",
        {
            "view": view,
            "rollout": rollout,
            "release": view.release,
            "counts": view.current,
            "exceeded": view.exceeded,
            "stage_rows": stage_rows,
            "states": INSTALL_STATES,
            "totals": {s: sum(r.states[s] for r in stage_rows) for s in INSTALL_STATES},
            "chart": progress_chart(view.progress, view.log, start, end),
            "actions": allowed_actions(rollout),
            "live": live,
            "refresh_seconds": ROLLOUT_REFRESH_SECONDS,
            "auto_refresh": refresh,
            "refresh": ROLLOUT_REFRESH_SECONDS if (live and refresh and error is None) else None,
            "log": list(reversed(view.log)),
            "next_auto_advance": (
                rollout.stage_started_at + rollout.auto_advance_seconds
                if rollout.auto_advance_seconds is not None
                and rollout.state is RolloutState.ACTIVE
                and not rollout.is_last_stage
                else None
            ),
            "error": _error(error),
        },
        status_code=200 if error is None else error.http_status,
        section="rollouts",
    )


@router.get(
    "/rollouts/{rollout_id}",
    summary="Admin page: one rollout (reloads itself every few seconds while live)",
    response_class=HTMLResponse,
)
def rollout_page(
    request: Request,
    rollout_id: int,
    store: RolloutStoreDep,
    catalog: CatalogDep,
    refresh: str | None = None,
) -> HTMLResponse:
    return render_rollout(request, store, catalog, rollout_id, refresh=refresh != "off")


@router.post(
    "/rollouts",
    summary="Start a rollout (the releases page's form)",
    description="Form fields `build_id`, `stages` (e.g. `10, 50, 100`), optional "
    "`failure_threshold_percent`, `failure_min_count`, `auto_advance_seconds`, "
    "`rollout_channel`, `rollout_hardware`, `device_ids`. 303 to the rollout's page.",
    status_code=303,
)
def start_rollout_form(
    request: Request,
    services: ServicesDep,
    store: RolloutStoreDep,
    build_id: Annotated[str, Form()],
    stages: OptionalFormText = None,
    failure_threshold_percent: OptionalFormText = None,
    failure_min_count: OptionalFormText = None,
    auto_advance_seconds: OptionalFormText = None,
    rollout_channel: OptionalFormText = None,
    rollout_hardware: OptionalFormText = None,
    device_ids: OptionalFormText = None,
) -> Response:
    values = {
        "stages": stages,
        "failure_threshold_percent": failure_threshold_percent,
        "failure_min_count": failure_min_count,
        "auto_advance_seconds": auto_advance_seconds,
        "rollout_channel": rollout_channel,
        "rollout_hardware": rollout_hardware,
        "device_ids": device_ids,
    }
    typed = {k: values[k] or "" for k in ROLLOUT_FORM_FIELDS}
    try:
        wanted = rollout_from_form(build_id, typed)
        if wanted is None:
            raise InvalidInput("stages are required, e.g. 10, 50, 100")
        rollout = store.create(wanted.to_spec())
    except OtaError as e:
        if wants_html(request):
            form = {"build_id": build_id, **typed}
            return render_page(request, services, error=e, form=form, which="rollout")
        raise
    return back_to_page(request, f"/admin/rollouts/{rollout.rollout_id}")


@router.post(
    "/rollouts/{rollout_id}/{action}",
    summary="Advance, pause, resume or abort a rollout (the rollout page's buttons)",
    description="Form fields: optional `reason` (pause, abort), `stage_index` (the stage "
    "the admin was looking at; 409 if the rollout has moved on) and `refresh=off` (keep "
    "the page's auto-refresh off). 303 back to the page.",
    status_code=303,
)
def rollout_action_form(
    request: Request,
    rollout_id: int,
    action: str,
    store: RolloutStoreDep,
    catalog: CatalogDep,
    reason: OptionalFormText = None,
    stage_index: OptionalFormText = None,
    refresh: OptionalFormText = None,
) -> Response:
    auto_refresh = refresh != "off"
    try:
        expected: int | None = None
        if stage_index:
            try:
                expected = int(stage_index)
            except ValueError as e:
                raise InvalidInput("stage_index must be a whole number") from e
        perform(
            store,
            rollout_id,
            action,
            reason=(reason or "").strip()[:500] or None,
            expected_stage=expected,
        )
    except OtaError as e:
        if wants_html(request):
            return render_rollout(
                request, store, catalog, rollout_id, error=e, refresh=auto_refresh
            )
        raise
    # An admin who stopped the auto-refresh keeps it stopped after pressing a button.
    suffix = "" if auto_refresh else "?refresh=off"
    return back_to_page(request, f"/admin/rollouts/{rollout_id}{suffix}")
