"""Push fan-out (issue 6, figure 2): a release at 100% → every known device has its offer.

Product: ``N`` devices (10,000; 1,000 with ``--quick``) known to the registry
(written through its own write path, :meth:`DeviceRegistry.apply`, as the
bridge's writer records announcements), a real ``ota bridge`` process with an
offer key (every push sealed with Ed25519) and the shipped push settings, the
database SQLite (the default). The admin — this process, another one than the
bridge, on its own database engine as ``ota http`` would be — publishes a
release at 100% with ``ReleaseService.add_upload``. Timed from that call
returning until the receivers got every device's offer; each offer is checked
afterwards (right topic, right device in the envelope, right build, no request
id).

Ceiling: a plain paho-mqtt publisher process sends ``N`` messages of the same
size as a real pushed offer, QoS 1, one to each device's offer topic, with the
bridge's own in-flight window (``MAX_INFLIGHT_OFFERS``); timed from its first
``publish`` until the same receivers got all.

Receivers: the devices are ``N`` ids; their offer topics are subscribed (QoS 1,
one subscription per device topic, as each device subscribes its own) by plain
paho collectors split over ``COLLECTORS`` processes, so neither side waits for
a single Python receiver. Figures are offers/s (``N`` / time), so the ratio reads
as throughput: product / ceiling ≥ 0.8 is the goal.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import PREFIX, BenchContext, CpuMeter, Result, add_cpu
from tests.e2e.processes import OtaProcess, ota_env

SECTION = "push"
COLLECTORS = 2
#: Topics per SUBSCRIBE packet (the shipped max_packet_size is 16 KiB).
SUBSCRIBE_BATCH = 200
ROUND_TIMEOUT = 120.0


def _nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
    client.on_socket_open = _nodelay
    return client


def device_ids(n: int) -> list[str]:
    return [f"dev-{i:05d}" for i in range(n)]


# -- collectors (child processes) -------------------------------------------------


def _collector(port: int, devices: list[str], conn: Connection) -> None:
    """Subscribe each device's offer topic; per round, collect ``expect`` offers and check them.

    Commands on ``conn``: ``("expect", n, build_id | None)`` → answers "armed"
    at once, then ``(count, arrivals, sizes, errors)`` when n arrived or nothing
    came for a while; ``("stop",)``. ``build_id`` None: ceiling payloads, only the
    topic is checked.
    """
    import threading

    client = _client("push-collector")
    lock = threading.Lock()
    done = threading.Event()
    state: dict[str, Any] = {"want": 0, "got": []}
    topics = [f"{PREFIX}/devices/{d}/offer" for d in devices]
    batches = [topics[i : i + SUBSCRIBE_BATCH] for i in range(0, len(topics), SUBSCRIBE_BATCH)]
    acks = [0]
    subscribed = threading.Event()
    connected = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with lock:
            got = state["got"]
            got.append((now, message.topic, message.payload))
            if len(got) >= state["want"] > 0:
                done.set()

    def on_subscribe(*_args: Any) -> None:
        acks[0] += 1  # paho's network thread only
        if acks[0] == len(batches):
            subscribed.set()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(20)
    for batch in batches:
        client.subscribe([(t, 1) for t in batch])
    subscribed.wait(60)
    conn.send("subscribed" if subscribed.is_set() else "not subscribed")
    mine = set(devices)
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        _, want, build_id = command
        with lock:
            state["want"], state["got"] = want, []
            done.clear()
        conn.send("armed")
        last = -1
        while not done.wait(5.0):  # until all arrived, or nothing new for 5 s
            with lock:
                count = len(state["got"])
            if count == last:
                break
            last = count
        time.sleep(0.2)  # duplicates, if any, arrive right behind
        with lock:
            got, state["want"] = state["got"], 0
            state["got"] = []
        conn.send(_check(got, build_id, mine))
    client.disconnect()
    client.loop_stop()


def _check(
    got: list[tuple[float, str, bytes]], build_id: str | None, mine: set[str]
) -> tuple[int, list[float], list[int], list[str]]:
    """Arrival times of the first offer per device, sizes, and what was wrong."""
    errors: list[str] = []
    first: dict[str, float] = {}
    sizes: list[int] = []
    for at, topic, payload in got:
        device = topic.split("/")[-2]
        if device not in mine:
            errors.append(f"offer for a device not subscribed here: {topic}")
            continue
        if device in first:
            errors.append(f"second offer for {device}")
            continue
        first[device] = at
        sizes.append(len(payload))
        if build_id is None:
            continue
        offer = json.loads(payload)
        envelope = json.loads(offer.get("envelope") or "{}")
        problems = [
            name
            for name, ok in (
                ("build_id", offer.get("build_id") == build_id),
                ("status", offer.get("status") == "update-available"),
                ("request_id", offer.get("request_id") is None),
                ("envelope device_id", envelope.get("device_id") == device),
                ("envelope nonce", envelope.get("nonce") is None),
                ("signature", bool(offer.get("envelope_signature"))),
            )
            if not ok
        ]
        if problems:
            errors.append(f"{device}: wrong {', '.join(problems)}")
    return len(first), sorted(first.values()), sizes, errors[:20]


# -- the ceiling publisher (child process) -------------------------------------------


def _publisher(port: int, devices: list[str], size: int, inflight: int, conn: Connection) -> None:
    client = _client("push-ceiling")
    client.max_inflight_messages_set(inflight)
    import threading

    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(20)
    topics = [f"{PREFIX}/devices/{d}/offer" for d in devices]
    payload = b"x" * size
    conn.send("ready")
    conn.recv()  # go
    started = time.monotonic()
    infos = [client.publish(topic, payload, qos=1) for topic in topics]
    infos[-1].wait_for_publish(ROUND_TIMEOUT)
    conn.send(started)
    conn.recv()  # the round is over
    client.disconnect()
    client.loop_stop()


# -- the section -------------------------------------------------------------------


class Collectors:
    def __init__(self, port: int, devices: list[str], count: int) -> None:
        mpctx = mp.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for k in range(count):
            parent, child = mpctx.Pipe()
            proc = mpctx.Process(
                target=_collector, args=(port, devices[k::count], child), daemon=True
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(90) or pipe.recv() != "subscribed":
                raise RuntimeError("a collector could not subscribe its devices")

    def arm(self, want_total: int, build_id: str | None) -> None:
        count = len(self.pipes)
        for k, pipe in enumerate(self.pipes):
            share = want_total // count + (1 if k < want_total % count else 0)
            pipe.send(("expect", share, build_id))
        for pipe in self.pipes:
            assert pipe.recv() == "armed"

    def results(self) -> tuple[int, list[float], list[int], list[str]]:
        total, arrivals, sizes, errors = 0, [], [], []
        for pipe in self.pipes:
            if not pipe.poll(ROUND_TIMEOUT + 30):
                raise RuntimeError("a collector did not report")
            count, times, sz, errs = pipe.recv()
            total += count
            arrivals += times
            sizes += sz
            errors += errs
        return total, sorted(arrivals), sizes, errors

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()


def register(admin: Any, devices: list[str], build_id: str) -> None:
    """The devices as the bridge's registry writer records their announcements."""
    from datetime import UTC, datetime

    from ota_core.models import Announcement
    from ota_core.store.devices import AnnouncementSeen

    now = datetime.now(UTC)
    announcement = Announcement(build_id=build_id, version="1.0.0")
    for start in range(0, len(devices), 2000):
        admin.registry.apply(
            [AnnouncementSeen(d, announcement, None, now) for d in devices[start : start + 2000]]
        )


def run(ctx: BenchContext) -> list[Result]:
    from broker_bridge.bridge import MAX_INFLIGHT_OFFERS
    from ota_core.keyfiles import ensure_offer_key, load_signer
    from ota_core.releases import ReleaseRequest
    from ota_core.services import Services

    n = 1_000 if ctx.quick else 10_000
    devices = device_ids(n)
    dirs = ctx.ota_dirs("push-ota")
    ensure_offer_key(dirs.keys_dir, load_signer(dirs.keys_dir))
    label = f"push to {n:,} devices"
    throughput = Result(
        SECTION, label, "offers/s", [], [],
        goal=">= 0.8 x raw paho publish", goal_ratio=0.8,
    )
    elapsed = Result(
        SECTION, f"push to {n:,} devices: release → last offer", "s", [], [],
        higher_is_better=False,
    )
    errors: list[str] = []
    with ctx.mosquitto("push-mosquitto") as broker:
        settings = dirs.settings(broker_url=broker.url, log_level="WARNING")
        admin = Services.from_settings(settings)
        package = b"\x7f" * 4096

        def release(index: int) -> str:
            build = f"b{index}"
            admin.releases.add_upload(
                ReleaseRequest(build, f"{index}.0.0", f"fw-{index}.bin"), [package], 10**6
            )
            return build

        release(1)
        register(admin, devices, "b1")
        collectors = Collectors(broker.port, devices, COLLECTORS)
        env = ota_env(
            dirs.env(broker_url=broker.url, log_level="INFO", mqtt_client_id="bench-push-bridge")
        )
        env.update(_bridge_env_overrides())
        bridge = OtaProcess(["bridge"], env, dirs.root)
        profiler: subprocess.Popen[bytes] | None = None
        try:
            bridge.wait_for_line("bridge subscribed", 60)
            time.sleep(1.0)  # the start-up pass (nothing to push) is over
            offer_size = 0
            for r in range(ctx.rounds):
                # -- product: the admin publishes build b{r+2} at 100% --------------
                meter = CpuMeter()
                meter.watch("ota bridge", bridge.proc.pid)
                meter.watch("mosquitto", broker.pid or 0)
                for k, proc in enumerate(collectors.procs):
                    meter.watch(f"collector {k + 1}", proc.pid)
                collectors.arm(n, f"b{r + 2}")
                if r == 0 and os.environ.get("PUSH_PROFILE"):
                    profiler = _profile(bridge.proc.pid, os.environ["PUSH_PROFILE"])
                meter.start()
                m0 = time.monotonic()
                release(r + 2)
                t0 = time.monotonic()
                got, arrivals, sizes, errs = collectors.results()
                cpu = meter.stop()
                took = (arrivals[-1] - t0) if arrivals else float("nan")
                add_cpu(throughput.cpu, _window(cpu, time.monotonic() - m0, took, "[push]"))
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(30)
                    profiler = None
                errors += errs
                if got < n:
                    errors.append(f"round {r + 1}: {got}/{n} devices got their push")
                throughput.product.append(got / took)
                elapsed.product.append(took)
                offer_size = offer_size or round(statistics.mean(sizes))
                if r == 0:
                    throughput.samples["product: release → offer (ms)"] = [
                        (a - t0) * 1000 for a in arrivals
                    ]
                print(f"  round {r + 1} product: {got}/{n} in {took:.2f} s", flush=True)

                # -- ceiling: paho publishes n same-size messages ----------------------
                took, cpu, arrivals = _ceiling_round(
                    broker, collectors, devices, offer_size, MAX_INFLIGHT_OFFERS, n, errors
                )
                add_cpu(throughput.cpu, cpu)
                throughput.ceiling.append(n / took)
                elapsed.ceiling.append(took)
                if r == 0:
                    throughput.samples["ceiling: first publish → message (ms)"] = arrivals
                print(f"  round {r + 1} ceiling: {n} in {took:.2f} s", flush=True)
        finally:
            if profiler is not None:
                profiler.kill()
            bridge.stop()
            for line in bridge.lines:
                if "push done" in line or "WARNING" in line or "ERROR" in line:
                    print("  bridge:", line, flush=True)
            collectors.close()
            admin.close()
    throughput.notes = (
        f"{n:,} devices known to the registry (SQLite), a real `ota bridge` (shipped push "
        f"settings, Ed25519-sealed offers of {offer_size} bytes), release added by "
        "ReleaseService.add_upload in the bench process; timed from that call returning to "
        "the last device's offer. Ceiling: one paho publisher process, QoS 1, same size, "
        f"in-flight window {MAX_INFLIGHT_OFFERS} (the bridge's). Receivers: {COLLECTORS} "
        "paho processes, one QoS 1 subscription per device topic, every offer checked "
        "(device, build, no request id, envelope)."
        + (f" ERRORS: {'; '.join(errors[:5])}" if errors else " No offer missing, wrong or doubled.")
    )
    return [throughput, elapsed]


def _bridge_env_overrides() -> dict[str, str]:
    """``PUSH_BRIDGE_ENV="OTA_PUSH_RATE=500 OTA_CATALOG_POLL_SECONDS=0.5"``: compare settings."""
    pairs = os.environ.get("PUSH_BRIDGE_ENV", "").split()
    return dict(pair.split("=", 1) for pair in pairs)


def _profile(pid: int, svg: str) -> subprocess.Popen[bytes]:
    """``PUSH_PROFILE=/tmp/push.svg``: py-spy records the bridge during the first round
    (``.txt``: collapsed stacks, to read or grep)."""
    spy = Path(sys.executable).with_name("py-spy")
    raw = ["--format", "raw"] if svg.endswith(".txt") else []
    proc = subprocess.Popen(
        [str(spy), "record", "--threads", "-r", "250", *raw, "-o", svg, "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached
    return proc


def _window(cpu: dict[str, float], metered: float, took: float, tag: str) -> dict[str, float]:
    """CPU % over the timed window, not the metered one (which also holds the collectors'
    wait for stragglers): the processes are idle outside the window."""
    scale = metered / took if took == took and took > 0 else 1.0
    return {f"{label} {tag}": value * scale for label, value in cpu.items()}


def _ceiling_round(
    broker: Any,
    collectors: Collectors,
    devices: list[str],
    size: int,
    inflight: int,
    n: int,
    errors: list[str],
) -> tuple[float, dict[str, float], list[float]]:
    mpctx = mp.get_context("fork")
    parent, child = mpctx.Pipe()
    proc = mpctx.Process(target=_publisher, args=(broker.port, devices, size, inflight, child))
    proc.start()
    try:
        assert parent.poll(30) and parent.recv() == "ready"
        meter = CpuMeter()
        meter.watch("paho publisher (ceiling)", proc.pid)
        meter.watch("mosquitto", broker.pid or 0)
        for k, cproc in enumerate(collectors.procs):
            meter.watch(f"collector {k + 1}", cproc.pid)
        collectors.arm(n, None)
        meter.start()
        m0 = time.monotonic()
        parent.send("go")
        got, arrivals, _sizes, errs = collectors.results()
        cpu = meter.stop()
        metered = time.monotonic() - m0
        started = parent.recv()
        parent.send("done")
    finally:
        proc.join(20)
        if proc.is_alive():
            proc.terminate()
    errors += errs
    if got < n:
        errors.append(f"ceiling: {got}/{n} messages arrived")
    took = (arrivals[-1] - started) if arrivals else float("nan")
    return took, _window(cpu, metered, took, "[ceiling]"), [(a - started) * 1000 for a in arrivals]
