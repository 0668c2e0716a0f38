"""The reference device client (``ota device``) and fleet simulator (``ota fleet``),
importable for scripts and simulators.

See :mod:`ota_core.device.client` for the device API, :mod:`ota_core.device.fleet` for
many simulated devices in one process, and :mod:`ota_core.device.command` /
:mod:`ota_core.device.fleet_command` for the command lines.
"""

from ota_core.device.client import (
    BrokerUnavailable,
    DeviceClient,
    DeviceConfig,
    DeviceError,
    InstallFailed,
    InstallResult,
    ListenResult,
    NotConnected,
    OfferTimeout,
    Outcome,
    OutcomeKind,
)
from ota_core.device.download import DownloadFailed, HttpPool
from ota_core.device.netloop import MqttLoop, SharedConnection
from ota_core.device.state import InstalledState, StateFileError, load_state, save_state
from ota_core.device.trust import OfferKeyring

__all__ = [
    "BrokerUnavailable",
    "DeviceClient",
    "DeviceConfig",
    "DeviceError",
    "DownloadFailed",
    "HttpPool",
    "InstallFailed",
    "InstallResult",
    "InstalledState",
    "ListenResult",
    "MqttLoop",
    "NotConnected",
    "OfferKeyring",
    "OfferTimeout",
    "Outcome",
    "OutcomeKind",
    "SharedConnection",
    "StateFileError",
    "load_state",
    "save_state",
]
