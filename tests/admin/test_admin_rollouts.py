"""Staged rollouts in the admin: the JSON API, the upload option, the pages and their forms."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ota_core.rollouts import cohort_bucket
from tests.admin.fleet_data import announce, report, when
from tests.http_files.live_server import Running

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def browser_headers(server: Running) -> dict[str, str]:
    return {**BROWSER, "Origin": server.url, "Sec-Fetch-Site": "same-origin"}


def start(server: Running, **body: Any) -> dict[str, Any]:
    response = server.admin_call("POST", "/admin/api/rollouts", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def act(server: Running, rollout_id: int, action: str, **body: Any) -> Any:
    return server.admin_call(
        "POST", f"/admin/api/rollouts/{rollout_id}/{action}", json=body or None
    )


def in_cohort(build_id: str, percent: float, count: int, prefix: str = "dev") -> list[str]:
    threshold = round(percent * 100)
    names = (f"{prefix}-{n}" for n in range(100_000))
    return [d for d in names if cohort_bucket(build_id, d) < threshold][:count]


@pytest.fixture
def released(server: Running) -> Running:
    server.publish("b-100", "1.0.0", b"old firmware")
    server.publish("b-200", "2.0.0", b"new firmware")
    return server


def test_start_rollout_and_read_it(released: Running) -> None:
    body = start(
        released,
        build_id="b-200",
        stages=[10, 50, 100],
        channel="stable",
        failure_threshold_percent=20,
        failure_min_count=2,
        auto_advance_seconds=3600,
    )
    assert body["state"] == "active" and body["percent"] == 10 and body["stage_index"] == 0
    assert body["version"] == "2.0.0" and body["channel"] == "stable"
    assert body["actions"] == ["advance", "pause", "abort"]
    assert body["next_auto_advance_at"] is not None
    assert [s["percent"] for s in body["stage_counts"]] == [10, 50, 100]
    assert body["current_stage"]["failure_threshold_percent"] == 20
    assert [e["note"] for e in body["log"]] == ["started"]
    listed = released.admin_call("GET", "/admin/api/rollouts").json()
    assert [r["rollout_id"] for r in listed] == [body["rollout_id"]]
    releases = {r["build_id"]: r for r in released.admin_call("GET", "/admin/api/releases").json()}
    assert releases["b-200"]["rollout_id"] == body["rollout_id"]
    assert releases["b-200"]["rollout_state"] == "active"
    assert releases["b-100"]["rollout_id"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"build_id": "b-404", "stages": [10]}, 404),
        ({"build_id": "b-200", "stages": [50, 10]}, 400),
        ({"build_id": "b-200", "stages": [0, 100]}, 400),
        ({"build_id": "b-200", "stages": [10, 101]}, 400),
        ({"build_id": "b-200", "stages": []}, 400),
        ({"build_id": "b-200", "stages": [10], "failure_threshold_percent": 120}, 400),
        ({"build_id": "b-200", "stages": [10], "failure_min_count": 0}, 400),
        ({"build_id": "b-200", "stages": [10], "device_ids": ["a b"]}, 400),
        ({"build_id": "b-200", "stages": [10], "surprise": 1}, 400),
        ({"build_id": "b-200"}, 400),
    ],
)
def test_bad_rollouts_are_refused(released: Running, body: dict[str, Any], status: int) -> None:
    response = released.admin_call("POST", "/admin/api/rollouts", json=body)
    assert response.status_code == status, response.text
    assert response.json()["status"] == "error"
    assert released.admin_call("GET", "/admin/api/rollouts").json() == []


def test_one_live_rollout_per_release(released: Running) -> None:
    first = start(released, build_id="b-200", stages=[10])
    again = released.admin_call(
        "POST", "/admin/api/rollouts", json={"build_id": "b-200", "stages": [20]}
    )
    assert again.status_code == 409
    act(released, first["rollout_id"], "abort")
    assert start(released, build_id="b-200", stages=[20])["rollout_id"] != first["rollout_id"]


def test_transitions_and_their_conflicts(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[10, 50, 100])["rollout_id"]
    paused = act(released, rid, "pause", reason="looking at logs")
    assert paused.status_code == 200
    assert paused.json()["state"] == "paused"
    assert paused.json()["reason"] == "paused by admin: looking at logs"
    assert paused.json()["actions"] == ["resume", "abort"]
    assert act(released, rid, "pause").status_code == 409
    assert act(released, rid, "advance").status_code == 409
    assert act(released, rid, "resume").json()["state"] == "active"
    advanced = act(released, rid, "advance", expected_stage_index=0)
    assert advanced.json()["percent"] == 50
    # The admin saw stage 0; it is at stage 1 now: a second "advance" must not skip 50%.
    stale = act(released, rid, "advance", expected_stage_index=0)
    assert stale.status_code == 409 and "meanwhile" in stale.json()["detail"]
    aborted = act(released, rid, "abort")
    assert aborted.json()["state"] == "aborted" and aborted.json()["actions"] == []
    assert act(released, rid, "resume").status_code == 409
    assert act(released, rid, "abort").status_code == 409
    notes = [e["note"] for e in aborted.json()["log"]]
    assert notes == [
        "started",
        "paused by admin: looking at logs",
        "resumed by admin",
        "advanced by admin to 50%",
        "aborted by admin",
    ]
    assert act(released, rid, "explode").status_code == 400
    assert act(released, 9999, "pause").status_code == 404
    assert released.admin_call("GET", "/admin/api/rollouts/9999").status_code == 404


def test_advancing_the_last_stage_completes(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[100])["rollout_id"]
    done = act(released, rid, "advance").json()
    assert done["state"] == "completed"
    assert done["log"][-1]["note"] == "completed by admin at 100%"


def test_counts_failure_rate_and_progress(released: Running) -> None:
    rid = start(
        released, build_id="b-200", stages=[50, 100], failure_threshold_percent=30,
        failure_min_count=2,
    )["rollout_id"]
    cohort = in_cohort("b-200", 50, 6)
    t0 = when("2030-01-01T00:00")  # after the stage started: these finishes count
    for device in cohort:
        announce(released, device, t0, "b-200", build_id="b-100")
    for device in cohort[:3]:
        report(released, device, t0, "installed", "b-200")
    report(released, cohort[3], t0, "failed", "b-200", "checksum-mismatch")
    report(released, cohort[4], t0, "downloading", "b-200")
    body = released.admin_call("GET", f"/admin/api/rollouts/{rid}").json()
    current = body["current_stage"]
    assert (current["offered"], current["installed"], current["failed"]) == (6, 3, 1)
    assert current["downloading"] == 1 and current["finished"] == 4
    assert current["failure_rate_percent"] == 25.0
    assert current["threshold_exceeded"] is False
    first = body["stage_counts"][0]
    assert first["total"] == 6 and first["reached"] and first["current"]
    assert first["states"] == {
        "offered": 1,
        "downloading": 1,
        "verifying": 0,
        "installing": 0,
        "installed": 3,
        "failed": 1,
    }
    assert body["stage_counts"][1]["total"] == 0 and not body["stage_counts"][1]["reached"]
    assert [(p["installed"], p["failed"]) for p in body["progress"]][-1] == (3, 1)
    report(released, cohort[5], t0, "failed", "b-200")
    again = released.admin_call("GET", f"/admin/api/rollouts/{rid}").json()["current_stage"]
    assert again["failure_rate_percent"] == 40.0 and again["threshold_exceeded"] is True


def test_upload_with_stages_starts_a_rollout(released: Running) -> None:
    response = released.upload(
        "b-300", "3.0.0", b"three", "ota-3.0.0.zip", stages="10, 50%, 100",
        failure_threshold_percent="15", failure_min_count="3",
    )
    assert response.status_code == 201, response.text
    rid = response.json()["rollout_id"]
    assert response.json()["rollout_state"] == "active"
    rollout = released.admin_call("GET", f"/admin/api/rollouts/{rid}").json()
    assert rollout["stages"] == [10, 50, 100]
    assert rollout["failure_threshold_percent"] == 15 and rollout["failure_min_count"] == 3
    # A device outside the first cohort is not offered it over HTTP either.
    outside = next(f"o-{n}" for n in range(500) if cohort_bucket("b-300", f"o-{n}") >= 1000)
    answer = released.post(
        "/check-update", json={"device_id": outside, "build_id": "b-100"}
    ).json()
    assert answer["build_id"] == "b-200"  # the release without a rollout, not b-300


def test_upload_with_bad_stages_publishes_nothing(released: Running) -> None:
    response = released.upload("b-300", "3.0.0", b"three", "ota-3.0.0.zip", stages="50, 10")
    assert response.status_code == 400
    assert "b-300" not in released.get("/metadata").json()
    assert not (released.dirs.packages_dir / "ota-3.0.0.zip").exists()


def test_upload_form_with_stages_redirects_to_the_rollout_page(released: Running) -> None:
    response = released.admin_call(
        "POST",
        "/admin/metadata/upload",
        headers=browser_headers(released),
        allow_redirects=False,
        files={"file": ("ota-3.0.0.zip", b"three")},
        data={"build_id": "b-300", "version": "3.0.0", "stages": "10 50 100"},
    )
    assert response.status_code == 303, response.text
    assert re.fullmatch(r"/admin/rollouts/\d+", response.headers["Location"])


def test_releases_page_has_a_rollout_form_per_release(released: Running) -> None:
    start(released, build_id="b-200", stages=[10, 100])
    html = released.admin_call("GET", "/admin/metadata").text
    assert html.count('action="/admin/rollouts"') == 1  # b-200 has one in progress
    assert 'name="stages"' in html
    assert 'href="/admin/rollouts/1"' in html


def test_start_form_redirects_or_shows_the_error(released: Running) -> None:
    ok = released.admin_call(
        "POST",
        "/admin/rollouts",
        headers=browser_headers(released),
        allow_redirects=False,
        data={"build_id": "b-200", "stages": "10, 50, 100", "failure_min_count": "2",
              "failure_threshold_percent": "20", "auto_advance_seconds": ""},
    )
    assert ok.status_code == 303 and ok.headers["Location"].startswith("/admin/rollouts/")
    bad = released.admin_call(
        "POST",
        "/admin/rollouts",
        headers=browser_headers(released),
        data={"build_id": "b-100", "stages": "90, 10"},
    )
    assert bad.status_code == 400
    assert 'role="alert"' in bad.text and "Could not start the rollout" in bad.text
    assert 'value="90, 10"' in bad.text  # what the admin typed stays
    scripted = released.admin_call(
        "POST", "/admin/rollouts", data={"build_id": "b-100", "stages": "x"}
    )
    assert scripted.status_code == 400 and scripted.json()["error"] == "bad-request"


def test_rollout_page_shows_state_counts_rate_chart_and_buttons(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[50, 100], failure_min_count=1,
                failure_threshold_percent=10)["rollout_id"]
    cohort = in_cohort("b-200", 50, 3)
    t0 = when("2030-01-01T00:00")
    for device in cohort:
        announce(released, device, t0, "b-200", build_id="b-100")
    report(released, cohort[0], t0, "installed", "b-200")
    report(released, cohort[1], t0, "failed", "b-200", "<b>boom</b>")
    page = released.admin_call("GET", f"/admin/rollouts/{rid}")
    assert page.status_code == 200
    html = page.text
    assert '<meta http-equiv="refresh" content="5">' in html
    assert 'id="rollout-state">active<' in html
    assert "50.0% failed" in html and "(1 of 2 finished" in html and "exceeded" in html
    assert '<svg class="chart"' in html and "<polyline" in html
    for action in ("advance", "pause", "abort"):
        assert f'action="/admin/rollouts/{rid}/{action}"' in html
    assert f'action="/admin/rollouts/{rid}/resume"' not in html
    assert 'name="stage_index" value="0"' in html
    assert "<script" not in html
    assert "script-src" not in page.headers["Content-Security-Policy"]
    quiet = released.admin_call("GET", f"/admin/rollouts/{rid}", params={"refresh": "off"})
    assert 'http-equiv="refresh"' not in quiet.text


def test_rollout_buttons_post_redirect_and_refuse_stale_clicks(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[10, 50, 100])["rollout_id"]
    headers = browser_headers(released)
    paused = released.admin_call(
        "POST",
        f"/admin/rollouts/{rid}/pause",
        headers=headers,
        allow_redirects=False,
        data={"stage_index": "0", "reason": "night freeze"},
    )
    assert paused.status_code == 303 and paused.headers["Location"] == f"/admin/rollouts/{rid}"
    page = released.admin_call("GET", f"/admin/rollouts/{rid}").text
    assert "paused by admin: night freeze" in page
    assert f'action="/admin/rollouts/{rid}/resume"' in page
    twice = released.admin_call(
        "POST", f"/admin/rollouts/{rid}/pause", headers=headers, data={"stage_index": "0"}
    )
    assert twice.status_code == 409 and 'role="alert"' in twice.text
    assert 'http-equiv="refresh"' not in twice.text  # the error stays on screen
    released.admin_call("POST", f"/admin/rollouts/{rid}/resume", headers=headers,
                        data={"stage_index": "0"})
    released.admin_call("POST", f"/admin/rollouts/{rid}/advance", headers=headers,
                        data={"stage_index": "0"})
    stale = released.admin_call(
        "POST", f"/admin/rollouts/{rid}/advance", headers=headers, data={"stage_index": "0"}
    )
    assert stale.status_code == 409 and "meanwhile" in stale.text
    aborted = released.admin_call(
        "POST", f"/admin/rollouts/{rid}/abort", headers=headers, allow_redirects=False,
        data={"stage_index": "1"},
    )
    assert aborted.status_code == 303
    done = released.admin_call("GET", f"/admin/rollouts/{rid}").text
    assert 'id="rollout-state">aborted<' in done
    assert 'http-equiv="refresh"' not in done and 'id="rollout-actions"' not in done


def test_buttons_keep_the_auto_refresh_off(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[10, 100])["rollout_id"]
    quiet = released.admin_call("GET", f"/admin/rollouts/{rid}", params={"refresh": "off"})
    assert 'name="refresh" value="off"' in quiet.text
    moved = released.admin_call(
        "POST",
        f"/admin/rollouts/{rid}/pause",
        headers=browser_headers(released),
        allow_redirects=False,
        data={"refresh": "off"},
    )
    assert moved.headers["Location"] == f"/admin/rollouts/{rid}?refresh=off"
    loud = released.admin_call("GET", f"/admin/rollouts/{rid}")
    assert 'name="refresh"' not in loud.text


def test_rollout_buttons_refuse_cross_site_posts(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[10])["rollout_id"]
    forged = released.admin_call(
        "POST",
        f"/admin/rollouts/{rid}/abort",
        headers={**BROWSER, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert forged.status_code == 403
    assert released.admin_call("GET", f"/admin/api/rollouts/{rid}").json()["state"] == "active"


def test_rollouts_list_page(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[10, 100], channel="stable")["rollout_id"]
    html = released.admin_call("GET", "/admin/rollouts").text
    assert f'href="/admin/rollouts/{rid}"' in html
    assert "channel stable" in html and ">active<" in html


def test_rollout_of_a_deleted_release_still_shows(released: Running) -> None:
    rid = start(released, build_id="b-200", stages=[10])["rollout_id"]
    assert released.admin_call("DELETE", "/admin/api/releases/b-200").status_code == 200
    page = released.admin_call("GET", f"/admin/rollouts/{rid}")
    assert page.status_code == 200 and "has been deleted" in page.text
    assert released.admin_call("GET", f"/admin/api/rollouts/{rid}").json()["version"] is None
    assert "(deleted)" in released.admin_call("GET", "/admin/rollouts").text
