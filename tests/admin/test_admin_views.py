"""Pure parts of the admin: the progress chart's geometry, rollout forms, allowed actions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from admin.charts import HEIGHT, progress_chart
from admin.rollouts import allowed_actions, rollout_from_form, thin
from ota_core.errors import InvalidInput
from ota_core.rollouts import Rollout, RolloutState


def points(text: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in text.split())]


def test_chart_draws_steps_from_start_to_end() -> None:
    series = [(110.0, 1, 0), (120.0, 2, 0), (130.0, 2, 1)]
    log = [
        {"at": 100.0, "state": "active", "percent": 10.0},
        {"at": 125.0, "state": "paused", "percent": 10.0},
    ]
    chart = progress_chart(series, log, start=100.0, end=140.0)
    installed = points(chart.installed)
    assert installed[0] == (chart.left, chart.bottom)  # starts at zero, at the start
    assert installed[-1][0] == chart.right  # runs to the end
    ys = [y for _, y in installed]
    assert ys == sorted(ys, reverse=True)  # never goes down (SVG y grows downwards)
    xs = [x for x, _ in installed]
    assert xs == sorted(xs)
    failed = points(chart.failed)
    assert failed[-1][1] < chart.bottom and len(failed) == 4  # 0 … step at 130 … end
    assert [(m.label, m.kind) for m in chart.markers] == [("10%", "active"), ("paused", "paused")]
    assert chart.markers[0].x == chart.left
    assert (chart.total_installed, chart.total_failed) == (2, 1)
    assert [t.label for t in chart.y_ticks] == ["0", "1", "2"]
    assert not chart.empty


def test_empty_chart_and_degenerate_time_axis() -> None:
    chart = progress_chart([], [{"at": 50.0, "state": "active", "percent": 1.0}], 50.0, 50.0)
    assert chart.empty
    assert points(chart.installed) == [(chart.left, chart.bottom), (chart.right, chart.bottom)]
    assert 0 < chart.bottom < HEIGHT


def test_thin_keeps_first_last_and_order() -> None:
    series = [(float(i), i, 0) for i in range(1000)]
    kept = thin(series, 50)
    assert len(kept) == 50 and kept[0] == series[0] and kept[-1] == series[-1]
    assert kept == sorted(kept)
    assert thin(series[:10], 50) == series[:10]


def test_rollout_form_parsing() -> None:
    parsed = rollout_from_form(
        "b-1",
        {
            "stages": " 1, 10%  50 100 ",
            "failure_threshold_percent": "12.5",
            "failure_min_count": "3",
            "auto_advance_seconds": "",
            "rollout_channel": " beta ",
            "rollout_hardware": "",
            "device_ids": "dev-1, dev-2\ndev-3",
        },
    )
    assert parsed is not None
    spec = parsed.to_spec()
    assert spec.stages == (1.0, 10.0, 50.0, 100.0)
    assert spec.failure_threshold_percent == 12.5 and spec.failure_min_count == 3
    assert spec.auto_advance_seconds is None and spec.hardware is None
    assert spec.channel == "beta"
    assert spec.device_ids == ("dev-1", "dev-2", "dev-3")
    assert rollout_from_form("b-1", {"stages": "  "}) is None


@pytest.mark.parametrize(
    "form",
    [
        {"stages": "ten"},
        {"stages": "10", "failure_min_count": "2.5"},
        {"stages": "10", "failure_threshold_percent": "lots"},
        {"stages": "10", "device_ids": "ok bad/id"},
    ],
)
def test_bad_rollout_forms(form: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        rollout_from_form("b-1", form)


def test_actions_follow_the_state() -> None:
    rollout = Rollout(1, "b", (10, 100))
    assert allowed_actions(rollout) == ("advance", "pause", "abort")
    assert allowed_actions(replace(rollout, state=RolloutState.PAUSED)) == ("resume", "abort")
    assert allowed_actions(replace(rollout, state=RolloutState.ABORTED)) == ()
    assert allowed_actions(replace(rollout, state=RolloutState.COMPLETED)) == ()
