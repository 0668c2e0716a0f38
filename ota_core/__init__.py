"""Domain core of the OTA push-update broker.

Modules here hold the pure domain: models, version order, release policy, offer
building, manifest and signing over bytes, device-side verification. They do no
network, database or file I/O. The I/O adapters live in clearly named modules:
``ota_core.store`` (database), ``ota_core.package_files`` (package folder),
``ota_core.keyfiles`` (key material on disk), and the services at the edges
(``broker_bridge``, ``http_files``, ``admin``).
"""

__version__ = "0.1.0"
