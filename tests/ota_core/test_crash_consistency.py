"""A process killed mid-upload leaves no half package under a real name and no catalog row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ota_core.errors import InvalidFilename, PackageNotFound
from ota_core.keyfiles import ensure_release_keys, load_signer
from ota_core.package_files import PackageFolder
from ota_core.releases import ReleaseService
from ota_core.store import ReleaseStore, open_database

UPLOADER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ota_core.keyfiles import load_signer
    from ota_core.package_files import PackageFolder
    from ota_core.releases import ReleaseRequest, ReleaseService
    from ota_core.store import ReleaseStore, open_database

    root = Path(sys.argv[1])
    service = ReleaseService(
        ReleaseStore(open_database(f"sqlite:///{root / 'ota.sqlite3'}")),
        PackageFolder(root / "packages"),
        load_signer(root / "keys"),
    )

    def slow_chunks():
        for _ in range(1000):
            yield b"x" * 65536
            print("chunk", flush=True)
            time.sleep(0.01)

    service.add_upload(ReleaseRequest("b1", "1.0.0", "big.bin"), slow_chunks(), 10**9)
    """
)


def test_kill_mid_upload_leaves_catalog_and_folder_consistent(tmp_path: Path) -> None:
    ensure_release_keys(tmp_path / "keys")
    open_database(f"sqlite:///{tmp_path / 'ota.sqlite3'}")  # migrate before the child races it
    child = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for _ in range(5):  # it is streaming bytes to disk now
        assert child.stdout.readline().startswith("chunk")
    child.send_signal(signal.SIGKILL)
    child.wait(10)

    packages = PackageFolder(tmp_path / "packages")
    assert not (tmp_path / "packages" / "big.bin").exists()
    leftovers = [p.name for p in (tmp_path / "packages").iterdir()]
    assert all(name.startswith(".upload-") for name in leftovers) and leftovers
    service = ReleaseService(
        ReleaseStore(open_database(f"sqlite:///{tmp_path / 'ota.sqlite3'}")),
        packages,
        load_signer(tmp_path / "keys"),
    )
    assert len(service.catalog()) == 0
    # The temp file is invisible to downloads and swept once it is old.
    for name in leftovers:
        old = time.time() - 7200
        os.utime(tmp_path / "packages" / name, (old, old))
    assert sorted(packages.sweep_stale_uploads()) == sorted(leftovers)
    assert list((tmp_path / "packages").iterdir()) == []


@given(st.text(max_size=300))
def test_any_name_resolves_inside_the_folder_or_is_refused(name: str) -> None:
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "ota-prop-packages"
    folder = PackageFolder(root)
    try:
        path = folder.resolve(name)
    except (InvalidFilename, PackageNotFound):
        return
    assert path.parent == root.resolve() and not path.name.startswith(".")
