"""The reference device client (``ota device``), importable for scripts and fleet simulators.

See :mod:`ota_core.device.client` for the API and :mod:`ota_core.device.command`
for the command line.
"""

from ota_core.device.client import (
    BrokerUnavailable,
    DeviceClient,
    DeviceConfig,
    DeviceError,
    InstallResult,
    NotConnected,
    OfferTimeout,
    Outcome,
    OutcomeKind,
)
from ota_core.device.download import DownloadFailed

__all__ = [
    "BrokerUnavailable",
    "DeviceClient",
    "DeviceConfig",
    "DeviceError",
    "DownloadFailed",
    "InstallResult",
    "NotConnected",
    "OfferTimeout",
    "Outcome",
    "OutcomeKind",
]
