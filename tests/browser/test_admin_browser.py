"""The admin page in a real browser, as an operator rolls a release out to a small fleet.

Real parts throughout: Chromium (Playwright) → the HTTP side on a socket; the bridge
(push and rollout supervisor) on Mosquitto; eleven reference device clients that
verify each pushed offer and download the package. Waiting is done by reloading
the page until it shows what is expected (bounded by generous timeouts); nothing
asserts on speed.

Screenshots of the main pages, at desktop and phone width, are written to
``$ADMIN_SCREENSHOTS_DIR`` when set (``docs/screenshots`` for the docs), else to the
test's temporary folder — either way each page is checked to fit a phone's width.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, FilePayload, Locator, Page, expect
from playwright.sync_api import Error as PlaywrightError

from tests.browser.stack import WAIT, SimDevices, Stack, pick_devices, wait_until
from tests.support import OtaDirs

BUILD = "build-1100"
PACKAGE = b"pump firmware 1.1.0\n" * 4096
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
MS = int(WAIT * 1000)


def screenshots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def admin_context(browser: Browser, stack: Stack, viewport: dict[str, int]) -> BrowserContext:
    return browser.new_context(
        base_url=stack.url,
        http_credentials={"username": "admin", "password": stack.server.password},
        viewport=viewport,  # type: ignore[arg-type]
    )


def reload_until(page: Page, done: Callable[[], bool], what: str, devices: SimDevices) -> None:
    """Reload the page until ``done()`` holds, as an admin watching it would."""
    deadline = time.monotonic() + WAIT
    while True:
        devices.check()
        if done():
            return
        if time.monotonic() > deadline:
            table = page.locator("#stage-counts").all_inner_texts()
            raise AssertionError(f"the page never showed {what}: {table} {devices.describe()}")
        time.sleep(0.2)
        page.reload()


def offered_beyond(stack: Stack, devices: SimDevices, cohort: list[str]) -> bool:
    """Was any device outside ``cohort`` offered the release?"""
    registry = stack.server.services.registry
    return any(
        row["build_id"] == BUILD
        for device_id in devices.clients
        if device_id not in cohort
        for row in registry.installs(device_id)
    )


def cell(page: Page, stage: int | str, state: str) -> Locator:
    """A count in the rollout page's table (state "total": offered in that stage)."""
    return page.locator(f'#stage-counts tr[data-stage="{stage}"] td[data-state="{state}"]')


def count(page: Page, stage: int | str, state: str) -> int:
    return int(cell(page, stage, state).inner_text())


class Camera:
    """Screenshots of a page at desktop and at phone width, each checked to fit."""

    def __init__(self, browser: Browser, stack: Stack, folder: Path) -> None:
        self.folder = folder
        self.contexts = [
            ("desktop", admin_context(browser, stack, DESKTOP)),
            ("phone", admin_context(browser, stack, PHONE)),
        ]
        self.pages = [(name, context.new_page()) for name, context in self.contexts]
        self.taken: list[Path] = []

    def shoot(self, name: str, path: str) -> None:
        for width_name, page in self.pages:
            response = page.goto(path)
            assert response is not None and response.ok, f"{path}: {response}"
            if width_name == "phone":
                # Usable on a phone: nothing wider than the screen (no sideways scrolling).
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
            target = self.folder / f"{name}-{width_name}.png"
            page.screenshot(path=str(target), full_page=True)
            self.taken.append(target)

    def close(self) -> None:
        for _, context in self.contexts:
            context.close()


@pytest.fixture
def camera(browser: Browser, stack: Stack, tmp_path: Path) -> Iterator[Camera]:
    taking = Camera(browser, stack, screenshots_dir(tmp_path))
    yield taking
    taking.close()


@pytest.fixture
def fleet(stack: Stack, ota_dirs: OtaDirs) -> Iterator[tuple[SimDevices, list[list[str]]]]:
    """Four devices reached at 10 %, four more at 50 % (three of them fail to install),
    three only at 100 %; all on pump-v2 / stable, running 1.0.0."""
    groups = pick_devices(BUILD, "pump", [(0, 10, 4), (10, 50, 4), (50, 100, 3)])
    first, second, rest = groups
    devices = SimDevices(
        stack, ota_dirs.public_key_path, [*first, *second, *rest], failing=second[1:]
    )
    try:
        devices.start()
        registry = stack.server.services.registry
        wait_until(lambda: len(registry.all()) == 11, "the bridge to record every device")
        yield devices, groups
    finally:
        devices.close()


def test_admin_page_needs_the_password(browser: Browser, stack: Stack) -> None:
    anonymous = browser.new_context(base_url=stack.url)
    wrong = browser.new_context(
        base_url=stack.url,
        http_credentials={"username": "admin", "password": "not-the-password"},
    )
    try:
        # Headless Chromium has no login dialog: a challenge it cannot answer fails the load.
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            anonymous.new_page().goto("/admin/metadata")
        response = wrong.new_page().goto("/admin/metadata")
        assert response is not None and response.status == 401
    finally:
        anonymous.close()
        wrong.close()


def test_staged_rollout_with_automatic_pause_in_a_real_browser(
    browser: Browser,
    stack: Stack,
    fleet: tuple[SimDevices, list[list[str]]],
    camera: Camera,
) -> None:
    devices, (first, second, rest) = fleet
    context = admin_context(browser, stack, DESKTOP)
    page = context.new_page()
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None,
    )

    # Log in (HTTP Basic) and upload the release through the page's form, staged 10/50/100.
    page.goto("/admin/metadata")
    expect(page.locator("h1")).to_have_text("Releases")
    package = FilePayload(name="pump-1.1.0.zip", mimeType="application/zip", buffer=PACKAGE)
    page.set_input_files("#u-file", files=[package])
    page.fill("#u-build", BUILD)
    page.fill("#u-version", "1.1.0")
    page.fill("#u-hw", "pump-v2")
    page.fill("#u-ch", "stable")
    page.fill("#u-notes", "Fixes the pressure sensor drift")
    page.fill("#u-stages", "10, 50, 100")
    page.fill("#u-thr", "25")
    page.fill("#u-min", "2")
    page.get_by_role("button", name="Upload and publish").click()
    page.wait_for_url(re.compile(r"/admin/rollouts/\d+$"))
    rollout_path = page.url.removeprefix(stack.url)
    expect(page.locator("#rollout-state")).to_have_text("active")
    expect(page.locator("h1")).to_contain_text(BUILD)
    # A live rollout's page reloads itself; the test reloads by hand instead, so a
    # self-reload never races its clicks (the buttons keep the choice).
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(1)
    watching = f"{rollout_path}?refresh=off"
    page.goto(watching)
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)

    # The 10 % cohort is pushed the offer; the devices download, verify, and install —
    # held at "installing" until the test lets them finish.
    reload_until(page, lambda: count(page, 0, "installing") == 4, "4 devices installing", devices)
    # The release and its rollout were published in one transaction: nobody else got it.
    assert not offered_beyond(stack, devices, first)
    assert count(page, 0, "total") == 4
    assert count(page, 1, "total") == 0 and count(page, 2, "total") == 0
    devices.gate.set()
    reload_until(page, lambda: count(page, 0, "installed") == 4, "4 devices installed", devices)
    expect(page.locator("#failure-rate")).to_contain_text("0.0% failed")
    devices.gate.clear()
    registry = stack.server.services.registry
    wait_until(
        lambda: all(
            (r := registry.get(d)) is not None and r.last_state == "installed" for d in first
        ),
        "the first cohort's reports in the registry",
    )

    # Advance to 50 %: three of the four newly reached devices fail to install, and the
    # bridge's rollout supervisor pauses the rollout, saying why.
    page.get_by_role("button", name="Advance to 50%").click()
    page.wait_for_url(f"**{watching}")
    reload_until(
        page,
        lambda: page.locator("#rollout-state").inner_text() == "paused",
        "the automatic pause",
        devices,
    )
    reason = page.locator("#rollout-reason").inner_text()
    assert "exceeds 25% at stage 50%" in reason, reason
    assert count(page, 1, "failed") >= 2
    expect(page.locator("#failure-rate")).to_contain_text("exceeded")
    expect(page.get_by_role("button", name="Resume at 50%")).to_be_visible()
    expect(page.get_by_role("button", name="Advance to 100%")).to_have_count(0)

    # Screenshots of the main pages while the rollout is paused (the most telling moment).
    camera.shoot("releases", "/admin/metadata")
    camera.shoot("rollouts", "/admin/rollouts")
    camera.shoot("devices", "/admin/devices")
    camera.shoot("device", f"/admin/devices/{second[1]}")
    camera.shoot("rollout", rollout_path)  # last: this page reloads itself

    # A failed device's page: its install, and why it is not offered the release now.
    page.goto(f"/admin/devices/{second[1]}")
    expect(page.locator("#installs")).to_contain_text("injected: flash write failed")
    expect(page.locator("#explain-table")).to_contain_text("is paused")
    # The device list filtered by status shows exactly the failed ones.
    page.goto("/admin/devices")
    page.select_option("#f-status", "failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"status=failed"))
    failed_rows = page.locator("#devices tbody tr")
    expect(failed_rows).not_to_have_count(0)
    listed = {row.split()[0] for row in failed_rows.all_inner_texts()}
    assert listed <= set(second[1:]), listed

    # Resume: active again at 50 % (failures before the resume no longer count).
    page.goto(watching)
    page.get_by_role("button", name="Resume at 50%").click()
    page.wait_for_url(f"**{watching}")
    expect(page.locator("#rollout-state")).to_have_text("active")
    expect(page.locator("#rollout-log")).to_contain_text("resumed by admin")

    # Abort with a reason: no more offers, no buttons, no auto-refresh.
    page.fill(f'form[action$="{rollout_path}/abort"] input[name="reason"]', "sensor regression")
    page.get_by_role("button", name="Abort").click()
    page.wait_for_url(f"**{watching}")
    expect(page.locator("#rollout-state")).to_have_text("aborted")
    expect(page.locator("#rollout-reason")).to_contain_text("aborted by admin: sensor regression")
    expect(page.locator("#rollout-actions")).to_have_count(0)
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)

    # The healthy device that was mid-install when the rollout paused and was aborted
    # finishes undisturbed.
    devices.gate.set()
    reload_until(page, lambda: count(page, 1, "installed") == 1, "the last install", devices)

    # Devices beyond the reached cohorts were never offered the release.
    for device_id in rest:
        record = registry.get(device_id)
        assert record is not None and record.last_offered_build is None, record
    assert count(page, 2, "total") == 0

    # The releases page shows the rollout's end, and offers to start a new one.
    page.goto("/admin/metadata")
    row = page.locator(f"#release-{BUILD}")
    expect(row).to_contain_text("aborted")
    expect(row.get_by_text("Start rollout…")).to_be_visible()

    assert csp_violations == []
    assert all(p.stat().st_size > 10_000 for p in camera.taken)
    context.close()
