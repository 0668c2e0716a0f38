"""Admin access: HTTP Basic for every admin route, and a cross-site check for writes.

Credentials are compared with :func:`secrets.compare_digest` (user name and
password both, always), so timing reveals neither. Browsers cache Basic
credentials and would attach them to a forged cross-site form post, so state
changing requests are refused when the browser says they come from another site
(``Sec-Fetch-Site``) or another origin (``Origin``). Scripts such as ``curl``
send neither header and pass, as the seed documents.

Behind a reverse proxy the ``Host`` header must be passed through unchanged
(nginx: ``proxy_set_header Host $host;``) for the ``Origin`` comparison to hold.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.requests import HTTPConnection

ADMIN_USER = "admin"
REALM = "ota-admin"
_CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TRUSTED_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _AdminBasic(HTTPBasic):
    """HTTP Basic that decodes UTF-8 (browsers send it) and never raises by itself.

    FastAPI's own scheme decodes ASCII only; this one keeps its OpenAPI
    description (the "Authorize" button on /docs) and leaves the 401 to
    :func:`require_admin`, so every refusal looks the same.
    """

    async def __call__(self, request: HTTPConnection) -> HTTPBasicCredentials | None:  # type: ignore[override]
        scheme, _, param = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        username, sep, password = decoded.partition(":")
        if not sep:
            return None
        return HTTPBasicCredentials(username=username, password=password)


_basic = _AdminBasic(auto_error=False, realm=REALM, description="user `admin`")


def require_admin(
    request: Request,
    credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> str:
    if credentials is None:
        raise HTTPException(401, "admin credentials required (HTTP Basic)", headers=_CHALLENGE)
    expected: str = request.app.state.admin_password
    user_ok = secrets.compare_digest(credentials.username.encode(), ADMIN_USER.encode())
    password_ok = secrets.compare_digest(credentials.password.encode(), expected.encode())
    if not (user_ok and password_ok):
        raise HTTPException(401, "wrong admin user name or password", headers=_CHALLENGE)
    return credentials.username


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


def same_origin(origin: str, host: str | None) -> bool:
    """True when ``origin`` (an Origin header) names the host the request was sent to."""
    if host is None:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False  # includes the opaque origin "null"
    mine = _host_port(parts.netloc, parts.scheme)
    return mine is not None and mine == _host_port(host, parts.scheme)


def refuse_cross_site(request: Request) -> None:
    """403 for a state-changing request a browser marks as cross-site or cross-origin."""
    if request.method in _SAFE_METHODS:
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in _TRUSTED_FETCH_SITES:
        raise HTTPException(403, "cross-site request refused (Sec-Fetch-Site)")
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(origin, request.headers.get("host")):
        raise HTTPException(403, "cross-origin request refused (Origin does not match Host)")


AdminUser = Annotated[str, Depends(require_admin)]
SameSite = Annotated[None, Depends(refuse_cross_site)]
