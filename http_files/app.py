"""The HTTP side: the seed-compatible device API, package downloads, and the admin.

:func:`create_app` wires thin routers around one :class:`~ota_core.services.Services`.
Every route that touches the database, the disk or the signing key is a plain
``def`` (run in the threadpool) or hands its work to the threadpool, so hashing
and RSA signing never block the event loop. One exception, for speed: package
downloads are ``async`` (an lstat and a stat, then ``sendfile``; see
:mod:`http_files.packages` and :mod:`http_files.server`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from admin import admin_router
from http_files import catalog, devices, health, keys, metrics, packages
from http_files.errors import install_error_handlers
from ota_core.services import Services

#: Largest request body outside the upload routes (JSON check-ups, admin forms).
DEFAULT_MAX_BODY_BYTES = 64 * 1024

DESCRIPTION = """\
Push-update broker for IoT fleets — HTTP side.

Devices normally learn about updates over MQTT; these endpoints keep the seed's
pull-style REST API working with the same field names:

* `POST /check-update` → the same body as the MQTT offer
* `GET /packages/{filename}` → resumable download (`Range`, `ETag`)
* `GET /checksum/{filename}`, `GET /metadata`, `GET /update?build_id=…`
* `GET /keys` → the release key and the offer keys (certified by the release key)

Signatures are RSA PKCS#1 v1.5 over SHA-256, verifiable with `keys/public.pem`:
`signature` signs the ASCII SHA-256 hex of the package, `manifest_signature`
signs the manifest's bytes.

Everything under `/admin` requires HTTP Basic (user `admin`). Errors are
`{"status": "error", "error": <code>, "detail": <text>}`.
"""


def _version() -> str:
    try:
        return version("ota-push-broker")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def create_app(services: Services, admin_password: str) -> FastAPI:
    """Build the HTTP application. The caller owns ``services`` (and closes it)."""
    if not admin_password:
        raise ValueError("an admin password is required")
    app = FastAPI(
        title="OTA push-update broker",
        version=_version(),
        description=DESCRIPTION,
        max_body_size=DEFAULT_MAX_BODY_BYTES,
    )
    app.state.services = services
    app.state.admin_password = admin_password
    install_error_handlers(app)
    app.include_router(devices.router)
    app.include_router(packages.router)
    app.include_router(catalog.router)
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(metrics.router)
    app.include_router(admin_router(services.settings.max_upload_bytes))
    return app
