"""ota_core.explain: the why behind an offer, always agreeing with policy.decide."""

from __future__ import annotations

import itertools
from dataclasses import replace

from ota_core.catalog import Catalog
from ota_core.explain import Verdict, explain
from ota_core.models import DeviceFacts
from ota_core.policy import decide
from ota_core.rollouts import Rollout, RolloutBook, RolloutState, cohort_bucket
from ota_core.signing import ReleaseSigner
from tests.ota_core.conftest import make_release


def device(**fields: str | None) -> DeviceFacts:
    values: dict[str, str | None] = {
        "device_id": "dev-1",
        "build_id": "build-1000",
        "version": None,
        "hardware": None,
        "channel": None,
    }
    values.update(fields)
    return DeviceFacts(**values)  # type: ignore[arg-type]


def ids_around(build_id: str, percent: float) -> tuple[str, str]:
    """A device id inside and one outside the cohort of ``percent`` (< 100) of ``build_id``."""
    threshold = round(percent * 100)
    names = [f"dev-{n}" for n in range(2000)]
    inside = next(d for d in names if cohort_bucket(build_id, d) < threshold)
    outside = next(d for d in names if cohort_bucket(build_id, d) >= threshold)
    return inside, outside


def with_rollout(catalog: Catalog, rollout: Rollout) -> Catalog:
    return Catalog.of(catalog.releases, catalog.revision, RolloutBook({rollout.build_id: rollout}))


def test_offered_release_and_why_the_newer_one_is_held_back(catalog: Catalog) -> None:
    # Generic device on 1.0.0: 2.0.0 is beta-only, 1.10.0 is board-a only, 1.9.0 fits.
    result = explain(catalog, device())
    assert result.current_version == "1.0.0"
    assert result.version_source == "catalog"
    assert result.offered is not None and result.offered.build_id == "build-1090"
    assert [v.release.build_id for v in result.verdicts] == [
        "build-2000",
        "build-1100",
        "build-1090",
    ]
    beta, board, generic = result.verdicts
    assert beta.verdict is Verdict.BLOCKED
    assert [c.name for c in beta.failed] == ["channel"]
    assert "'beta'" in beta.failed[0].detail and "did not say" in beta.failed[0].detail
    assert board.verdict is Verdict.BLOCKED and [c.name for c in board.failed] == ["hardware"]
    assert generic.verdict is Verdict.OFFERED and not generic.failed
    assert result.not_newer == 1  # 1.0.0 itself
    assert "build-1090" in result.summary


def test_a_newer_eligible_release_wins_over_an_older_eligible_one(catalog: Catalog) -> None:
    result = explain(catalog, device(hardware="board-a"))
    assert result.offered is not None and result.offered.build_id == "build-1100"
    verdicts = {v.release.build_id: v.verdict for v in result.verdicts}
    assert verdicts == {
        "build-2000": Verdict.BLOCKED,
        "build-1100": Verdict.OFFERED,
        "build-1090": Verdict.ELIGIBLE,
    }


def test_up_to_date_and_unknown_build(catalog: Catalog) -> None:
    newest = explain(catalog, device(build_id="build-2000", channel="beta"))
    assert newest.offered is None and newest.verdicts == ()
    assert newest.summary.startswith("up to date")
    unknown = explain(catalog, device(build_id="build-x"))
    assert unknown.error is not None and "build-x" in unknown.error
    assert unknown.summary.startswith("no answer")
    announced = explain(catalog, device(build_id="build-x", version="1.9.5"))
    assert announced.version_source == "announced"
    assert announced.offered is None  # 1.10.0 is board-a only, 2.0.0 beta only
    assert len(announced.verdicts) == 2


def test_cohort_bucket_against_the_stage_threshold(catalog: Catalog) -> None:
    inside, outside = ids_around("build-1090", 10)
    rolled = with_rollout(catalog, Rollout(3, "build-1090", (10, 50, 100)))
    hit = explain(rolled, device(device_id=inside))
    assert hit.offered is not None and hit.offered.build_id == "build-1090"
    cohort = next(c for c in hit.verdicts[-1].checks if c.name == "rollout-cohort")
    assert cohort.ok and "< 1000" in cohort.detail and "stage 1 of 3 (10%)" in cohort.detail
    miss = explain(rolled, device(device_id=outside))
    assert miss.offered is None
    verdict = miss.verdicts[-1]
    assert verdict.cohort is not None and not verdict.cohort.inside
    assert verdict.cohort.threshold == 1000
    assert [c.name for c in verdict.failed] == ["rollout-cohort"]
    assert "joins once a stage reaches" in verdict.failed[0].detail


def test_paused_or_aborted_rollout_and_audience(catalog: Catalog) -> None:
    inside = "dev-1"  # every device is inside a 100% stage
    base = Rollout(4, "build-1090", (100,))
    paused = with_rollout(
        catalog, replace(base, state=RolloutState.PAUSED, reason="failure rate 30%")
    )
    verdict = explain(paused, device(device_id=inside)).verdicts[-1]
    assert [c.name for c in verdict.failed] == ["rollout-state"]
    assert "paused: failure rate 30%" in verdict.failed[0].detail
    aborted = with_rollout(catalog, replace(base, state=RolloutState.ABORTED))
    assert explain(aborted, device(device_id=inside)).offered is None
    listed = with_rollout(catalog, replace(base, device_ids=frozenset({"dev-other"})))
    audience = explain(listed, device(device_id=inside)).verdicts[-1].failed
    assert [c.name for c in audience] == ["rollout-audience"]
    on_channel = with_rollout(catalog, replace(base, channel="stable"))
    detail = explain(on_channel, device(device_id=inside)).verdicts[-1].failed[0].detail
    assert "'stable'" in detail
    completed = with_rollout(catalog, replace(base, state=RolloutState.COMPLETED))
    assert explain(completed, device(device_id=inside)).offered is not None


def test_explain_always_agrees_with_decide(signer: ReleaseSigner) -> None:
    releases = [
        make_release(signer, "b-100", "1.0.0", 1),
        make_release(signer, "b-110", "1.1.0", 2, channel="beta"),
        make_release(signer, "b-120", "1.2.0", 3, hardware="hw-a"),
        make_release(signer, "b-130", "1.3.0", 4),
        make_release(signer, "b-140", "1.4.0", 5, hardware="hw-a", channel="beta"),
    ]
    books = [
        RolloutBook(),
        RolloutBook({"b-130": Rollout(1, "b-130", (10, 50))}),
        RolloutBook(
            {
                "b-130": Rollout(1, "b-130", (50,), state=RolloutState.PAUSED),
                "b-140": Rollout(2, "b-140", (30, 100), stage_index=1, hardware="hw-a"),
                "b-120": Rollout(3, "b-120", (25,), channel="beta"),
            }
        ),
    ]
    checked = 0
    for book in books:
        catalog = Catalog.of(releases, 1, book)
        for n, build, hardware, channel in itertools.product(
            range(25), ["b-100", "b-110", "b-120"], [None, "hw-a", "hw-b"], [None, "beta"]
        ):
            facts = device(device_id=f"d-{n}", build_id=build, hardware=hardware, channel=channel)
            expected = decide(catalog, facts).release
            got = explain(catalog, facts)
            assert got.offered == expected, (facts, got.summary)
            offered = [v for v in got.verdicts if v.verdict is Verdict.OFFERED]
            assert len(offered) == (0 if expected is None else 1)
            checked += 1
    assert checked == 3 * 25 * 3 * 3 * 2
