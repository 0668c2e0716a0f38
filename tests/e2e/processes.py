"""Start the real ``ota`` command as child processes and wait for it to serve."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

OTA = str(Path(sys.executable).with_name("ota"))


@dataclass
class OtaProcess:
    """A running ``ota …`` child whose combined output is collected for failure messages."""

    args: list[str]
    env: dict[str, str]
    cwd: Path
    proc: subprocess.Popen[str] = field(init=False)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [OTA, *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ota {self.args} exited {self.proc.returncode}:\n{self.output}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no line with {needle!r} within {timeout}s:\n{self.output}")

    def wait_http(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ota {self.args} exited {self.proc.returncode}:\n{self.output}"
                )
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} not healthy within {timeout}s:\n{self.output}")

    def stop(self, sig_timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(sig_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def ota_env(base: Mapping[str, str | Path | int]) -> dict[str, str]:
    """The parent's environment minus any OTA_* the developer has set, plus ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    env.update({k: str(v) for k, v in base.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_ota(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OTA, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
