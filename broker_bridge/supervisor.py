"""The rollout supervisor: pauses rollouts that fail, advances those whose wait is over.

Every ``OTA_ROLLOUT_CHECK_SECONDS`` (1 s by default) it reads each active
rollout, counts its current stage's devices by install state
(:meth:`~ota_core.store.rollouts.RolloutStore.stage_counts`, from the status
reports the bridge writes), and lets :func:`ota_core.rollouts.evaluate` decide:
pause with the reason when the failure rate among finished devices exceeds the
threshold (with at least the minimum count of failures), advance once the
stage's wait is over. The change is written with
:meth:`~ota_core.store.rollouts.RolloutStore.transition`, which bumps the
catalog revision, so the bridges reload the catalog and push the newly reached
cohort (see :mod:`broker_bridge.push`).

Several bridges each run a supervisor; that is safe. ``transition`` is a
compare-and-set on the rollout row, and the change refuses to apply when the
rollout is no longer the one evaluated: of two bridges acting on the same
evaluation, one wins and the other gets a :class:`~ota_core.errors.Conflict`,
which only means the work is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ota_core.errors import Conflict, NotFound, OtaError
from ota_core.rollouts import Rollout, evaluate
from ota_core.store.rollouts import RolloutStore

log = logging.getLogger(__name__)


class RolloutSupervisor:
    def __init__(
        self,
        store: RolloutStore,
        period: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._period = period
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        #: Transitions this supervisor made (pauses and advances).
        self.transitions = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="ota-rollout-supervisor", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self._period):
            try:
                self.check_once()
            except OtaError as e:  # the database is away: say so once, keep trying
                if not self._failing:
                    log.warning("rollout check failed; retrying error=%s", e.detail)
                self._failing = True
            except Exception:
                log.exception("rollout check failed unexpectedly; retrying")
            else:
                if self._failing:
                    log.info("rollout checks recovered")
                self._failing = False

    def check_once(self) -> list[Rollout]:
        """Evaluate every active rollout once; the rollouts this call changed."""
        changed: list[Rollout] = []
        for rollout in self._store.live():
            counts = self._store.stage_counts(rollout)
            result = evaluate(rollout, counts, self._clock())
            if not result.changed:
                continue

            def apply(
                current: Rollout, seen: Rollout = rollout, after: Rollout = result.rollout
            ) -> Rollout:
                # Someone (an admin, another bridge) changed it since it was evaluated.
                if current != seen:
                    raise Conflict("rollout changed since it was evaluated")
                return after

            try:
                done = self._store.transition(rollout.rollout_id, apply, result.note)
            except (Conflict, NotFound) as e:
                log.debug(
                    "rollout already changed elsewhere rollout_id=%d detail=%s",
                    rollout.rollout_id, e.detail,
                )
                continue
            self.transitions += 1
            changed.append(done)
            log.log(
                logging.WARNING if done.state.value == "paused" else logging.INFO,
                "rollout %s rollout_id=%d build_id=%s stage=%g%% reason=%s",
                done.state.value if done.state.value != "active" else "advanced",
                done.rollout_id, done.build_id, done.percent, result.note,
            )
        return changed
