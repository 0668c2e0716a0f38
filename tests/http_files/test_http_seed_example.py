"""The seed README's device-integration example, run unchanged against this server.

The code block is read from the seed at test time (``../shared/seed/`` next to the
repo), only ``http://your-server:8000`` is replaced by the server's URL, and it runs
with this venv's Python in a folder holding the server's ``public.pem``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http_files.live_server import Running

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = REPO_ROOT.parent / "shared" / "seed" / "000_f9d35439d920e724.txt"
PLACEHOLDER = "http://your-server:8000"


def seed_device_example() -> str:
    if not SEED.is_file():
        pytest.fail(
            f"the seed README is missing: expected {SEED} (../shared/seed/ next to the repo "
            "root); the seed compatibility test cannot run without it"
        )
    text = SEED.read_text(encoding="utf-8")
    heading = text.find("Device Integration Example")
    assert heading >= 0, f"{SEED} has no 'Device Integration Example' section"
    match = re.search(r"```python\n(.*?)```", text[heading:], re.DOTALL)
    assert match, f"{SEED}: no python code block under 'Device Integration Example'"
    code = match.group(1)
    assert PLACEHOLDER in code, f"the seed example no longer mentions {PLACEHOLDER}"
    return code


def test_seed_device_example_runs_unchanged(server: Running, tmp_path: Path) -> None:
    # The example asks as build-1001 and expects an update: publish 1.1.0 the seed's way
    # (a file in packages/ named on the admin form) and 1.2.0 by upload.
    server.put_file("ota-1.1.0.zip", b"seed firmware 1.1.0" * 1000)
    added = server.admin_call(
        "POST",
        "/admin/metadata/add",
        allow_redirects=False,
        data={"build_id": "build-1001", "version": "1.1.0", "filename": "ota-1.1.0.zip"},
    )
    assert added.status_code == 303, added.text
    server.publish("build-1002", "1.2.0", b"seed firmware 1.2.0" * 5000)

    script = tmp_path / "device_example.py"
    script.write_text(seed_device_example().replace(PLACEHOLDER, server.url))
    shutil.copy(server.dirs.public_key_path, tmp_path / "public.pem")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Update verified successfully!" in result.stdout, (result.stdout, result.stderr)
