"""Scale-out with real processes: three ``ota bridge --replicas-group g`` on real Mosquitto.

One database for the three (PostgreSQL when a throwaway cluster can be started,
else one SQLite file in a shared OTA_DATA_DIR — said loudly), 2,000 simulated
devices announcing over one anonymous MQTT connection (QoS 1, a unique request
id each), and one bridge SIGKILLed in the middle.

What is asserted: every device gets an answer (an offer or up-to-date) for its
request id. Like a real device, a simulated one whose answer does not come
asks again with the same request id once the fleet has gone quiet: replicas
keep no MQTT session (see broker_bridge.bridge), so announcements in flight to
the killed bridge are lost with it and only a retry recovers them.

What is measured and reported (printed, and in the test's user properties):
devices answered more than once for their request id, and devices that needed
a retry. Duplicates are counted, not forbidden — the device matches answers by
request id and ignores a second one — but they must stay rare (< 5%).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.processes import OtaProcess, ota_env, run_ota
from tests.support import MosquittoServer, MqttProbe, free_port
from tests.support.postgres import PostgresUnavailable, start_postgres

DEVICES = 2_000
KILL_AFTER_ANSWERS = 600  # the second half is published after the kill
QUIET_SECONDS = 3.0  # no answer for this long: unanswered devices ask again
MAX_RETRIES = 5
WAIT = 60.0  # bound on waiting only


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[tuple[str, str]]:
    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        warnings.warn(
            f"scale-out test on SHARED SQLITE, not PostgreSQL (unavailable: {e})", stacklevel=1
        )
        yield "sqlite", f"sqlite:///{tmp_path / 'data' / 'ota.sqlite3'}"
        return
    try:
        yield "postgresql", server.new_database()
    finally:
        server.stop()


def _answers(
    probe: MqttProbe, answers: dict[str, list[str]], timeout: float, limit: int | None = None
) -> int:
    """Take every offer that arrives within ``timeout`` of the previous one (at most
    ``limit``); how many."""
    got = 0
    while limit is None or got < limit:
        try:
            message = probe.messages.get(timeout=timeout)
        except queue.Empty:
            return got
        device_id = message.topic.split("/")[-2]
        request_id = json.loads(message.payload).get("request_id")
        answers.setdefault(device_id, []).append(str(request_id))
        got += 1
    return got


def _announcements(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ota_announcements_total"
    )


def test_three_replicas_answer_every_device_despite_a_killed_one(
    tmp_path: Path,
    mosquitto: MosquittoServer,
    database_url: tuple[str, str],
    record_property: Callable[[str, object], None],
) -> None:
    database, url = database_url
    prefix = f"t{uuid.uuid4().hex[:10]}/ota/v1"
    (tmp_path / "data").mkdir()
    env = ota_env({
        "OTA_BROKER_URL": mosquitto.url,
        "OTA_MQTT_PROTOCOL": "5",
        "OTA_TOPIC_PREFIX": prefix,
        "OTA_DATA_DIR": tmp_path / "data",
        "OTA_KEYS_DIR": tmp_path / "keys",
        "OTA_PACKAGES_DIR": tmp_path / "packages",
        "OTA_DATABASE_URL": url,
        "OTA_DEVICE_RATE_LIMIT": 0,
        "OTA_PUSH_RATE": 0,  # answers only: every offer here answers an announcement
        "OTA_CATALOG_POLL_SECONDS": "0.2",
    })
    done = run_ota(["keygen"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    for build_id, version in (("build-1", "1.0.0"), ("build-2", "1.1.0")):
        package = tmp_path / f"fw-{build_id}.bin"
        package.write_bytes(f"firmware {build_id}".encode() * 100)
        done = run_ota(
            ["release", "add", str(package), "--version", version, "--build-id", build_id],
            env, tmp_path,
        )
        assert done.returncode == 0, done.stderr

    bridges: list[OtaProcess] = []
    metrics_ports = [free_port() for _ in range(3)]
    handled: list[float] = []
    probe: MqttProbe | None = None
    try:
        for n in range(3):
            bridges.append(OtaProcess(
                ["bridge", "--replicas-group", "g"],
                {
                    **env,
                    "OTA_MQTT_CLIENT_ID": f"bridge-{n}-{uuid.uuid4().hex[:6]}",
                    "OTA_METRICS_PORT": str(metrics_ports[n]),
                },
                tmp_path,
            ))
        for bridge in bridges:
            bridge.wait_for_line("bridge subscribed", timeout=WAIT)

        probe = MqttProbe(mosquitto.url)
        probe.subscribe(f"{prefix}/devices/+/offer")
        announcements = {
            f"sim-{n:05d}": json.dumps({
                # Half are offered build-2, half are already on it.
                "build_id": "build-1" if n % 2 else "build-2",
                "hardware": "board-a",
                "channel": "stable",
                "request_id": f"req-{n:05d}-{uuid.uuid4().hex[:6]}",
            }).encode()
            for n in range(DEVICES)
        }
        request_ids = {d: json.loads(p)["request_id"] for d, p in announcements.items()}
        ids = list(announcements)

        def announce(device_ids: list[str]) -> None:
            assert probe is not None
            for device_id in device_ids:
                probe.client.publish(f"{prefix}/devices/{device_id}/announce",
                                     announcements[device_id], qos=1)

        answers: dict[str, list[str]] = {}
        # The devices keep announcing (another thread) while a bridge dies mid-stream.
        sender = threading.Thread(target=announce, args=(ids,), daemon=True)
        sender.start()
        deadline = time.monotonic() + WAIT
        while len(answers) < KILL_AFTER_ANSWERS:
            assert time.monotonic() < deadline, "the replicas stopped answering before the kill"
            _answers(probe, answers, 1.0, limit=1)
        victim = bridges[1]
        victim.proc.kill()  # SIGKILL: no goodbye, no draining
        victim.proc.wait(10)
        answered_at_kill = len(answers)
        sender.join(WAIT)

        retried: set[str] = set()
        for _round in range(MAX_RETRIES + 1):
            _answers(probe, answers, QUIET_SECONDS)
            missing = [d for d in ids if request_ids[d] not in answers.get(d, [])]
            if not missing:
                break
            retried.update(missing)
            announce(missing)  # a real device asks again with the same request id
        # Each survivor's own /metrics (OTA_METRICS_PORT): how the work was split.
        handled = [_announcements(metrics_ports[i]) for i in (0, 2)]
    finally:
        for bridge in bridges:
            bridge.stop()
        if probe is not None:
            probe.close()

    missing = [d for d in ids if request_ids[d] not in answers.get(d, [])]
    duplicates = sum(1 for d in ids if len(answers.get(d, [])) > 1)
    survivors = [b for i, b in enumerate(bridges) if i != 1]
    record_property("database", database)
    record_property("duplicates", duplicates)
    record_property("retried", len(retried))
    print(
        f"\nscale-out database={database} devices={DEVICES} answered_at_kill={answered_at_kill} "
        f"duplicates={duplicates} retried={len(retried)} missing={len(missing)} "
        f"survivors_announcements={handled}"
    )
    assert not missing, f"{len(missing)} devices never answered, e.g. {missing[:5]}"
    assert all(set(answers[d]) == {request_ids[d]} for d in ids), "an answer for a wrong request"
    assert duplicates < DEVICES * 0.05, duplicates
    assert all(count > 0 for count in handled), handled
    for bridge in survivors:
        assert bridge.proc.returncode == 0, bridge.output[-2000:]


def test_a_replicas_group_on_mqtt311_is_refused_plainly(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    env = ota_env({
        "OTA_BROKER_URL": mosquitto.url,
        "OTA_DATA_DIR": tmp_path / "data",
        "OTA_KEYS_DIR": tmp_path / "keys",
        "OTA_PACKAGES_DIR": tmp_path / "packages",
    })
    assert run_ota(["keygen"], env, tmp_path).returncode == 0
    done = run_ota(
        ["bridge", "--replicas-group", "g", "--mqtt-protocol", "3.1.1"], env, tmp_path
    )
    assert done.returncode != 0
    assert "needs MQTT 5 shared subscriptions" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
