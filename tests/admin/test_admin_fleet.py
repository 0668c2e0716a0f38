"""The fleet registry in the admin: filtered device lists, one device's story, "explain"."""

from __future__ import annotations

import pytest

from ota_core.rollouts import cohort_bucket
from tests.admin.fleet_data import announce, report, small_fleet, when
from tests.http_files.live_server import Running


def ids(server: Running, **params: str) -> list[str]:
    response = server.admin_call("GET", "/admin/api/devices", params=params)
    assert response.status_code == 200, response.text
    return [d["device_id"] for d in response.json()]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["d1", "d2", "d3"]),
        ({"version": "1.0.0"}, ["d1", "d2"]),
        ({"status": "failed"}, ["d2"]),
        ({"status": "installed"}, ["d1"]),
        ({"status": "none"}, ["d3"]),
        ({"channel": "beta"}, ["d2"]),
        ({"hardware": "hw-a"}, ["d1", "d3"]),
        ({"seen_after": "2026-01-02T00:00"}, ["d2", "d3"]),
        ({"seen_before": "2026-01-02T00:00Z"}, ["d1"]),
        # 2026-01-02 11:00+02:00 is 09:00 UTC: before d2's 10:00.
        ({"seen_before": "2026-01-02T11:00+02:00"}, ["d1"]),
        ({"seen_after": "2026-01-01T12:00", "seen_before": "2026-01-03T00:00"}, ["d2"]),
        ({"hardware": "hw-a", "version": "2.0.0"}, ["d3"]),
        # An HTML form sends every field, empty ones too: empty means "any".
        ({"version": "", "status": "", "channel": "", "seen_after": ""}, ["d1", "d2", "d3"]),
        ({"channel": "nightly"}, []),
    ],
)
def test_device_filters(server: Running, params: dict[str, str], expected: list[str]) -> None:
    small_fleet(server)
    assert ids(server, **params) == expected


def test_device_paging_and_total(server: Running) -> None:
    small_fleet(server)
    response = server.admin_call("GET", "/admin/api/devices", params={"limit": 1, "offset": 1})
    assert [d["device_id"] for d in response.json()] == ["d2"]
    assert response.headers["X-Total-Count"] == "3"
    filtered = server.admin_call("GET", "/admin/api/devices", params={"hardware": "hw-a"})
    assert filtered.headers["X-Total-Count"] == "2"


@pytest.mark.parametrize(
    "params",
    [
        {"status": "exploded"},
        {"version": "not a version"},
        {"seen_after": "yesterday"},
        {"limit": "0"},
        {"limit": "100000"},
        {"offset": "-1"},
        {"limit": "many"},
    ],
)
def test_bad_filters_are_400(server: Running, params: dict[str, str]) -> None:
    response = server.admin_call("GET", "/admin/api/devices", params=params)
    assert response.status_code == 400
    assert response.json()["error"] in {"bad-request", "bad-version"}


def test_device_detail_has_installs_and_history(server: Running) -> None:
    small_fleet(server)
    body = server.admin_call("GET", "/admin/api/devices/d2").json()
    assert body["device_id"] == "d2"
    assert body["last_state"] == "failed" and body["last_detail"] == "checksum-mismatch"
    assert [(i["build_id"], i["state"]) for i in body["installs"]] == [("b-200", "failed")]
    assert [e["kind"] for e in body["history"]] == ["status", "announce"]  # newest first
    assert body["history"][0]["detail"] == "checksum-mismatch"
    assert server.admin_call("GET", "/admin/api/devices/nobody").status_code == 404


def test_explain_names_the_offer_and_each_reason(server: Running) -> None:
    server.publish("b-100", "1.0.0", b"one")
    server.publish("b-110", "1.1.0", b"eleven")
    server.publish("b-120", "1.2.0", b"twelve", hardware="hw-b")
    server.publish("b-130", "1.3.0", b"thirteen", channel="beta")
    announce(server, "d1", when("2026-01-01T10:00"), build_id="b-100", hardware="hw-a")
    body = server.admin_call("GET", "/admin/api/devices/d1/explain").json()
    assert body["current_version"] == "1.0.0" and body["version_source"] == "catalog"
    assert body["offered_build_id"] == "b-110"
    verdicts = {r["build_id"]: r for r in body["releases"]}
    assert verdicts["b-110"]["verdict"] == "offered"
    assert verdicts["b-120"]["verdict"] == "blocked"
    failed = [c for c in verdicts["b-120"]["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["hardware"]
    assert "'hw-b'" in failed[0]["detail"] and "'hw-a'" in failed[0]["detail"]
    assert [c["name"] for c in verdicts["b-130"]["checks"] if not c["ok"]] == ["channel"]
    assert body["not_newer"] == 1


def test_explain_shows_the_cohort_bucket_against_the_stage(server: Running) -> None:
    server.publish("b-100", "1.0.0", b"one")
    server.publish("b-200", "2.0.0", b"two")
    outside = next(f"dev-{n}" for n in range(500) if cohort_bucket("b-200", f"dev-{n}") >= 1000)
    announce(server, outside, when("2026-01-01T10:00"), build_id="b-100")
    started = server.admin_call(
        "POST", "/admin/api/rollouts", json={"build_id": "b-200", "stages": [10, 100]}
    )
    assert started.status_code == 201, started.text
    body = server.admin_call("GET", f"/admin/api/devices/{outside}/explain").json()
    assert body["offered_build_id"] is None
    (verdict,) = body["releases"]
    assert verdict["rollout_id"] == started.json()["rollout_id"]
    assert verdict["cohort_bucket"] == cohort_bucket("b-200", outside)
    assert verdict["cohort_threshold"] == 1000
    cohort = next(c for c in verdict["checks"] if c["name"] == "rollout-cohort")
    assert not cohort["ok"]
    # At 100% every device is in: the same device is now offered the release.
    rollout_id = started.json()["rollout_id"]
    server.admin_call("POST", f"/admin/api/rollouts/{rollout_id}/advance")
    again = server.admin_call("GET", f"/admin/api/devices/{outside}/explain").json()
    assert again["offered_build_id"] == "b-200"


def test_explain_for_a_device_that_never_announced(server: Running) -> None:
    report(server, "quiet", when("2026-01-01T10:00"), "downloading", "b-1")
    body = server.admin_call("GET", "/admin/api/devices/quiet/explain").json()
    assert body["offered_build_id"] is None
    assert "not announced" in body["error"]


def test_devices_page_filters_and_links(server: Running) -> None:
    small_fleet(server)
    page = server.admin_call("GET", "/admin/devices", params={"hardware": "hw-a", "status": ""})
    assert page.status_code == 200
    html = page.text
    assert 'href="/admin/devices/d1"' in html and 'href="/admin/devices/d3"' in html
    assert "/admin/devices/d2" not in html
    assert 'value="hw-a"' in html  # the filter stays filled in
    assert "2 devices match" in html
    assert "<script" not in html
    assert "script-src" not in page.headers["Content-Security-Policy"]
    bad = server.admin_call("GET", "/admin/devices", params={"seen_after": "soon"})
    assert bad.status_code == 400 and 'role="alert"' in bad.text


def test_devices_page_pages(server: Running) -> None:
    small_fleet(server)
    first = server.admin_call("GET", "/admin/devices", params={"limit": "2"}).text
    assert "1-2 of 3" in first
    assert 'href="/admin/devices?limit=2&amp;offset=2"' in first
    second = server.admin_call("GET", "/admin/devices", params={"limit": "2", "offset": "2"})
    assert "3-3 of 3" in second.text and "previous" in second.text


XSS = "<script>alert(1)</script>"


def test_device_page_shows_record_explain_installs_history_escaped(server: Running) -> None:
    server.publish("b-100", "1.0.0", b"one")
    server.publish("b-200", "2.0.0", b"two")
    announce(server, "d9", when("2026-01-01T10:00"), "b-200", build_id="b-100", channel="beta")
    report(server, "d9", when("2026-01-01T10:01"), "failed", "b-200", XSS)
    page = server.admin_call("GET", "/admin/devices/d9")
    assert page.status_code == 200
    html = page.text
    assert "Would be offered b-200 (2.0.0)" in html
    assert 'id="installs"' in html and 'id="history"' in html
    assert XSS not in html and "&lt;script&gt;" in html
    assert server.admin_call("GET", "/admin/devices/nobody").status_code == 404
