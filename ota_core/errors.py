"""One exception family for the whole product.

Every error the domain raises is an :class:`OtaError`. Edges translate it exactly
once: the HTTP side to a status code (:attr:`OtaError.http_status`), the bridge to
an MQTT error reply (:attr:`OtaError.code`). Nothing else is caught broadly.

::

    OtaError
    ├── InvalidInput               bad-request          400
    │   ├── InvalidDeviceId        bad-device-id        400
    │   ├── InvalidFilename        bad-filename         400
    │   ├── InvalidVersion         bad-version          400
    │   └── PayloadTooLarge        payload-too-large    413
    ├── NotFound                   not-found            404
    │   ├── UnknownBuild           unknown-build        404
    │   └── PackageNotFound        package-not-found    404
    ├── Conflict                   conflict             409
    ├── ChecksumMismatch           checksum-mismatch    400
    ├── KeyMaterialError           key-error            500
    ├── VerificationFailed         (device side)        -
    └── ServiceUnavailable         unavailable          503
        └── PortInUse              port-in-use          503
"""

from __future__ import annotations


class OtaError(Exception):
    """Root of every error this product raises on purpose."""

    code: str = "internal-error"
    http_status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(OtaError):
    code = "bad-request"
    http_status = 400


class InvalidDeviceId(InvalidInput):
    code = "bad-device-id"


class InvalidFilename(InvalidInput):
    code = "bad-filename"


class InvalidVersion(InvalidInput):
    code = "bad-version"


class PayloadTooLarge(InvalidInput):
    code = "payload-too-large"
    http_status = 413


class NotFound(OtaError):
    code = "not-found"
    http_status = 404


class UnknownBuild(NotFound):
    code = "unknown-build"


class PackageNotFound(NotFound):
    code = "package-not-found"


class Conflict(OtaError):
    code = "conflict"
    http_status = 409


class ChecksumMismatch(OtaError):
    code = "checksum-mismatch"
    http_status = 400


class KeyMaterialError(OtaError):
    code = "key-error"
    http_status = 500


class ServiceUnavailable(OtaError):
    code = "unavailable"
    http_status = 503


class PortInUse(ServiceUnavailable):
    """A port this product must listen on is taken; the detail says how to pick another."""

    code = "port-in-use"


class VerificationFailed(OtaError):
    """A device refused an offer or a package. ``reason`` names the check that failed."""

    code = "verification-failed"
    http_status = 400

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
