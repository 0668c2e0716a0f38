"""Section 1: announce -> offer throughput and latency, the bridge vs a do-nothing responder.

Load: the simulated fleet of :mod:`bench.loadgen` (real MQTT connections on the
device simulator's network loop, split over ``LOAD_PROCESSES`` processes) sends a
burst of 20,000 announcements at QoS 1; a configuration is

* 1,000 devices, one connection each;
* 200 devices, one connection each;
* one connection per load process publishing for many ids (1,000 ids in all).

Product: a real ``ota bridge`` process as shipped (SQLite registry, Ed25519
envelopes, reply cache), with the per-device rate limit off — the burst sends
20 to 100 announcements per device, which the default limit (2/s, burst 20)
would rightly drop. Ceiling: a do-nothing paho-mqtt responder that answers each
announcement on the device's offer topic with a payload of the same size as a
real offer (echoing the request id, so latency is matched the same way). Same
Mosquitto (the repo's mosquitto.conf), same load processes, alternating rounds.

Latency: the same fleet at a fixed offered rate of half the ceiling's median
throughput, for ``PACED_SECONDS``; p50/p99 of announce -> offer for both.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import psutil

from bench.common import BenchContext, CpuMeter, Result, add_cpu, percentile
from bench.loadgen import PREFIX, request_id_of, serve
from ota_core.keyfiles import ensure_offer_key, load_signer
from ota_core.releases import ReleaseRequest
from ota_core.services import Services
from tests.e2e.processes import OtaProcess, ota_env
from tests.support.mosquitto import MosquittoServer
from tests.support.ota_dirs import OtaDirs

BURST = 20_000
LOAD_PROCESSES = 4
PACED_SECONDS = 8.0
SETTLE_SECONDS = 10.0


@dataclass(frozen=True)
class FleetShape:
    label: str
    devices: int
    mode: str  # "per-device" | "shared"


SHAPES = (
    FleetShape("1,000 devices, 1,000 connections", 1000, "per-device"),
    FleetShape("200 devices, 200 connections", 200, "per-device"),
    FleetShape(f"1,000 ids over {LOAD_PROCESSES} connections", 1000, "shared"),
)


# -- the fleet ------------------------------------------------------------------


class Fleet:
    """``LOAD_PROCESSES`` load processes holding the fleet's connections."""

    def __init__(self, host: str, port: int, shape: FleetShape, processes: int = LOAD_PROCESSES) -> None:
        ctx = mp.get_context("spawn")
        run = uuid.uuid4().hex[:4]
        ids = [f"bench{run}-d{i:05d}" for i in range(shape.devices)]
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for k in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=serve,
                args=(child, host, port, ids[k::processes], shape.mode, f"L{k}"),
                daemon=True,
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(120):
                raise RuntimeError("a load process did not connect within 120 s")
            reply = pipe.recv()
            if reply[0] != "ready":
                raise RuntimeError(f"load process failed: {reply}")

    def watch(self, meter: CpuMeter) -> None:
        for k, proc in enumerate(self.procs):
            meter.watch(f"load process {k + 1}/{len(self.procs)}", proc.pid)

    def command(self, name: str, *args: Any) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send((name, args))
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(600):
                raise RuntimeError(f"load process gave no answer to {name}")
            reply = pipe.recv()
            if isinstance(reply, tuple):
                raise RuntimeError(f"load process failed: {reply}")
            replies.append(reply)
        return replies

    def close(self) -> None:
        for pipe in self.pipes:
            with suppress(OSError):
                pipe.send(("stop", ()))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def burst_rate(replies: list[dict[str, Any]]) -> tuple[float, int, int]:
    """(answers/s from the first send to the last answer, answers, sent)."""
    received = sum(r["received"] for r in replies)
    sent = sum(r["sent"] for r in replies)
    start = min(r["started"] for r in replies)
    last = max(r["last"] for r in replies if r["received"]) if received else start
    return (received / (last - start) if received and last > start else 0.0), received, sent


# -- the responders ---------------------------------------------------------------


def _do_nothing_responder(conn: Connection, host: str, port: int, size: int, protocol: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    # The simulator's own TCP_NODELAY hook, so both sides of the bench set it alike.
    from ota_core.device.netloop import _nodelay as _nodelay_socket

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"ceiling-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
    )
    client.on_socket_open = _nodelay_socket
    client.max_inflight_messages_set(100)  # as the bridge
    pad = b"x" * size

    def on_message(c: Any, _u: Any, message: Any) -> None:
        device = message.topic.split("/")[3]
        rid = (request_id_of(message.payload) or "").encode()
        head = b'{"request_id":"' + rid + b'","pad":"'
        body = head + pad[: max(0, size - len(head) - 2)] + b'"}'
        c.publish(f"{PREFIX}/devices/{device}/offer", body, qos=1)

    client.on_message = on_message
    client.on_subscribe = lambda *a: conn.send("ready")
    client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/devices/+/announce", qos=1)
    client.connect(host, port)
    client.loop_start()
    conn.recv()  # stop
    client.disconnect()
    client.loop_stop()


@contextmanager
def do_nothing_responder(broker: MosquittoServer | None, size: int, meter: CpuMeter | None = None, host: str = "127.0.0.1", port: int | None = None) -> Iterator[None]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_do_nothing_responder,
        args=(child, host, port or (broker.port if broker else 1883), size, "3.1.1"),
        daemon=True,
    )
    proc.start()
    if not parent.poll(30):
        proc.kill()
        raise RuntimeError("the do-nothing responder did not subscribe")
    parent.recv()
    if meter is not None:
        meter.watch("ceiling responder", proc.pid)
    try:
        yield
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def prepare_ota(ctx: BenchContext, name: str) -> OtaDirs:
    """Keys (release + offer key), one release "build-2" 2.0.0 offered to build-1 devices."""
    dirs = ctx.ota_dirs(name)
    ensure_offer_key(dirs.keys_dir, load_signer(dirs.keys_dir))
    services = Services.from_settings(dirs.settings(log_level="WARNING"))
    try:
        services.releases.add_upload(
            ReleaseRequest("build-2", "2.0.0", "fw-2.bin"), [os.urandom(100_000)], 10**7
        )
    finally:
        services.close()
    return dirs


@contextmanager
def bridge_process(dirs: OtaDirs, broker: MosquittoServer, meter: CpuMeter | None = None, replicas: int = 1, **extra: str) -> Iterator[OtaProcess]:
    """``ota bridge`` as shipped; ``replicas`` > 1: that many on one MQTT 5 shared
    subscription (``--replicas-group``), each with its own registry writer process."""
    procs: list[OtaProcess] = []
    try:
        for k in range(replicas):
            options = dict(extra)
            if replicas > 1:
                options.update(mqtt_protocol="5", replicas_group="bench")
            env = ota_env(
                dirs.env(
                    broker_url=broker.url,
                    device_rate_limit="0",
                    log_level="INFO",
                    mqtt_client_id=f"bench-bridge-{k}-{uuid.uuid4().hex[:6]}",
                    **options,
                )
            )
            procs.append(OtaProcess(["bridge"], env, dirs.root))
        for k, proc in enumerate(procs):
            proc.wait_for_line("bridge subscribed", timeout=60)
            if meter is not None:
                label = "bridge" if replicas == 1 else f"bridge replica {k + 1}"
                meter.watch(label, proc.proc.pid)
                for child in psutil.Process(proc.proc.pid).children(recursive=True):
                    meter.watch(f"{label}: registry writer", child.pid)
        yield procs[0]
    finally:
        for proc in procs:
            code = proc.stop()
            if code not in (0, -15):
                print(f"  bridge exited {code}:\n" + "\n".join(proc.lines[-20:]), flush=True)


def offer_size(dirs: OtaDirs, broker: MosquittoServer) -> int:
    """Bytes of a real offer (the ceiling answers with the same size)."""
    from tests.support import MqttProbe

    with bridge_process(dirs, broker):
        probe = MqttProbe(broker.url)
        try:
            probe.subscribe(f"{PREFIX}/devices/size-probe/offer")
            probe.publish(
                f"{PREFIX}/devices/size-probe/announce",
                b'{"build_id":"build-1","version":"1.0.0","request_id":"size"}',
            )
            return len(probe.expect(30).payload)
        finally:
            probe.close()


# -- the section --------------------------------------------------------------------


Responder = Callable[[CpuMeter], Any]


def measure_burst(fleet: Fleet, responder: Responder, broker: MosquittoServer, burst: int) -> tuple[float, dict[str, float], int]:
    meter = CpuMeter()
    fleet.watch(meter)
    meter.watch("mosquitto", broker.pid or 0)
    with responder(meter):
        meter.start()
        replies = fleet.command("burst", burst // len(fleet.pipes), SETTLE_SECONDS)
        cpu = meter.stop()
    rate, received, sent = burst_rate(replies)
    return rate, cpu, sent - received


def measure_paced(fleet: Fleet, responder: Responder, rate: float, seconds: float) -> tuple[list[float], int]:
    with responder(CpuMeter()):
        replies = fleet.command("paced", rate / len(fleet.pipes), seconds, SETTLE_SECONDS)
    latencies = [x * 1000 for r in replies for x in r["latencies"]]
    lost = sum(r["sent"] - r["received"] for r in replies)
    return latencies, lost


def run(ctx: BenchContext) -> list[Result]:
    burst = 2_000 if ctx.quick else BURST
    paced_seconds = 2.0 if ctx.quick else PACED_SECONDS
    results: list[Result] = []
    with ctx.mosquitto("mosquitto-announce") as broker:
        dirs = prepare_ota(ctx, "announce")
        size = offer_size(dirs, broker)
        print(f"  offer size {size} bytes", flush=True)

        def ceiling(meter: CpuMeter) -> Any:
            return do_nothing_responder(broker, size, meter)

        def product(meter: CpuMeter) -> Any:
            return bridge_process(dirs, broker, meter)

        def replicas(meter: CpuMeter) -> Any:
            return bridge_process(dirs, broker, meter, replicas=2)

        for shape in SHAPES:
            fleet = Fleet("127.0.0.1", broker.port, shape)
            main = shape is SHAPES[0]
            try:
                variants = [("1 bridge", product)] + ([("2 bridges, shared subscription", replicas)] if main else [])
                throughputs = []
                for label, responder_of in variants:
                    result = throughput(ctx, fleet, broker, ceiling, responder_of, burst, f"{shape.label}, {label}")
                    results.append(result)
                    throughputs.append((label, responder_of, result))
                if main:
                    for label, responder_of, result in throughputs:
                        results.extend(latency(ctx, fleet, ceiling, responder_of, result, paced_seconds, label))
                    # Also where the bridge is not saturated: half its own burst rate.
                    label, responder_of, result = throughputs[0]
                    results.extend(latency(ctx, fleet, ceiling, responder_of, result, paced_seconds, label, of_product=True))
            finally:
                fleet.close()
    return results


def throughput(ctx: BenchContext, fleet: Fleet, broker: MosquittoServer, ceiling: Responder, product: Responder, burst: int, label: str) -> Result:
    result = Result(
        "announce", f"throughput, {label}", "offers/s", [], [],
        goal=">= 0.8 x ceiling", goal_ratio=0.8,
    )
    lost_total = 0
    for _round in range(ctx.rounds):
        for kind, responder in (("ceiling", ceiling), ("product", product)):
            rate, cpu, lost = measure_burst(fleet, responder, broker, burst)
            getattr(result, kind).append(rate)
            add_cpu(result.cpu, {f"{kind}: {k}": v for k, v in cpu.items()})
            if kind == "product":
                lost_total += lost
            print(f"    {label} {kind}: {rate:,.0f}/s lost={lost}", flush=True)
    result.notes = (
        f"burst of {burst:,} QoS 1 announcements; {lost_total} unanswered over "
        f"{ctx.rounds} product rounds"
    )
    return result


def latency(ctx: BenchContext, fleet: Fleet, ceiling: Responder, product: Responder, throughput: Result, seconds: float, label: str, of_product: bool = False) -> list[Result]:
    """p50/p99 paced at half the ceiling's burst rate (the goal's rate) or, with
    ``of_product``, at half the product's own (where it is not saturated)."""
    base = throughput.product_median if of_product else throughput.ceiling_median
    rate = 0.5 * (base or 1000.0)
    where = "half the bridge's rate" if of_product else "half the ceiling's rate"
    p50 = Result("announce", f"latency p50 at {rate:,.0f}/s ({where}), {label}", "ms", [], [], higher_is_better=False)
    p99 = Result(
        "announce", f"latency p99 at {rate:,.0f}/s ({where}), {label}", "ms", [], [], higher_is_better=False,
        goal="" if of_product else "<= 2 x ceiling p99", goal_ratio=None if of_product else 2.0,
    )
    samples: dict[str, list[float]] = {"ceiling": [], "bridge": []}
    lost_total = 0
    for _round in range(ctx.rounds):
        for kind, responder in (("ceiling", ceiling), ("product", product)):
            latencies, lost = measure_paced(fleet, responder, rate, seconds)
            getattr(p50, kind).append(percentile(latencies, 50))
            getattr(p99, kind).append(percentile(latencies, 99))
            samples["ceiling" if kind == "ceiling" else "bridge"].extend(latencies)
            if kind == "product":
                lost_total += lost
            print(
                f"    paced {rate:,.0f}/s {kind}: p50 {percentile(latencies, 50):.2f} ms "
                f"p99 {percentile(latencies, 99):.2f} ms lost={lost}",
                flush=True,
            )
    p99.samples = samples
    p99.notes = (
        f"{seconds:.0f} s paced at {where}'s median burst rate, 1,000 connections; "
        f"{lost_total} unanswered over {ctx.rounds} bridge rounds"
    )
    return [p50, p99]


if __name__ == "__main__":
    raise SystemExit("run through the suite: .venv/bin/python -m bench.run --only announce")
