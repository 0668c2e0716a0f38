"""Rendering the admin pages: one Jinja environment, the page headers, small filters.

The pages are server-rendered HTML with no JavaScript at all, so the Content
Security Policy can forbid scripts outright (``default-src 'none'`` and no
``script-src``). Charts are inline SVG drawn here; the rollout page refreshes
itself with ``<meta http-equiv="refresh">``, which needs no script and no CSP
exception. Inline styles are the one allowance (``style-src 'unsafe-inline'``):
there is no stylesheet to fetch and no build step.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

#: Page hardening: no scripts at all, forms may only post back here, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def utc(value: datetime | float | None, seconds: bool = True) -> str:
    """A time as ``2026-11-25 12:00:05 UTC`` (epoch seconds or a datetime)."""
    if value is None:
        return "-"
    when = (
        datetime.fromtimestamp(value, UTC)
        if isinstance(value, int | float)
        else value.astimezone(UTC)
    )
    return when.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def ago(value: datetime | float | None, now: float | None = None) -> str:
    """How long ago, roughly: ``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``."""
    if value is None:
        return "never"
    then = value if isinstance(value, int | float) else value.timestamp()
    seconds = max(0.0, (time.time() if now is None else now) - then)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def percent(value: float) -> str:
    return f"{value:g}%"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,  # every value on the page is operator or device input
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(utc=utc, ago=ago, percent=percent)
    return env


TEMPLATES = Jinja2Templates(env=_environment())


def base_path(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    section: str = "",
) -> HTMLResponse:
    """Render a page with the shared headers; ``section`` highlights the navigation."""
    values = {"base": base_path(request), "section": section, "refresh": None, **context}
    return TEMPLATES.TemplateResponse(
        request, template, values, status_code=status_code, headers=PAGE_HEADERS
    )
