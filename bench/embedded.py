"""Section 4: the announce test against ``ota run``'s embedded amqtt broker, 1,000 devices.

Product: ``ota run`` as a newcomer starts it (embedded amqtt broker + bridge +
HTTP side in one process, SQLite, generated keys), 1,000 simulated devices on
their own connections, a burst of 20,000 announcements at QoS 1, then a paced
run at half the rate the product reached. Figures: offers/s, p99 latency, and
offers lost (announcements never answered) — none may be.

Ceiling: the same fleet and burst against the same amqtt broker code
(:class:`broker_bridge.embedded.EmbeddedBroker`) in a process of its own,
answered by the do-nothing paho-mqtt responder of section 1.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

import psutil

from bench.announce import (
    BURST,
    SETTLE_SECONDS,
    Fleet,
    FleetShape,
    burst_rate,
    do_nothing_responder,
    prepare_ota,
)
from bench.common import BenchContext, CpuMeter, Result, add_cpu, percentile
from tests.e2e.processes import OtaProcess, ota_env
from tests.support.ports import free_port

SHAPE = FleetShape("1,000 devices on the embedded broker", 1000, "per-device")
PACED_SECONDS = 8.0


def _amqtt_main(conn: Connection, port: int) -> None:
    from broker_bridge.embedded import EmbeddedBroker

    async def serve() -> None:
        broker = EmbeddedBroker("127.0.0.1", port)
        await broker.start()
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await broker.shutdown()

    asyncio.run(serve())


@contextmanager
def amqtt_broker() -> Iterator[tuple[int, int]]:
    """The embedded broker alone, in its own process: (port, pid)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    port = free_port()
    proc = ctx.Process(target=_amqtt_main, args=(child, port), daemon=True)
    proc.start()
    if not parent.poll(30):
        proc.kill()
        raise RuntimeError("amqtt broker did not start")
    parent.recv()
    try:
        yield port, proc.pid or 0
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()


@contextmanager
def ota_run(ctx: BenchContext) -> Iterator[tuple[int, int]]:
    """``ota run`` with its embedded broker: (MQTT port, pid)."""
    dirs = prepare_ota(ctx, "embedded")
    mqtt_port, http_port = free_port(), free_port()
    env = ota_env(dirs.env(mqtt_port=str(mqtt_port), http_port=str(http_port),
                           device_rate_limit="0", log_level="INFO"))
    proc = OtaProcess(["run"], env, dirs.root)
    try:
        proc.wait_for_line("bridge subscribed", timeout=60)
        yield mqtt_port, proc.proc.pid
    finally:
        proc.stop()


def run(ctx: BenchContext) -> list[Result]:
    burst = 2_000 if ctx.quick else BURST
    seconds = 2.0 if ctx.quick else PACED_SECONDS
    throughput = Result(
        "embedded", "throughput, 1,000 devices", "offers/s", [], [],
    )
    p99 = Result("embedded", "latency p99 at half the product's rate", "ms", [], [], higher_is_better=False)
    lost_total = 0
    samples: dict[str, list[float]] = {"ceiling (amqtt + paho responder)": [], "ota run": []}
    size = 0
    for _round in range(ctx.rounds):
        # Product: ota run.
        with ota_run(ctx) as (port, pid):
            if not size:
                size = offer_size_on(port)
            meter = CpuMeter()
            meter.watch("ota run", pid)
            for child in psutil.Process(pid).children(recursive=True):
                meter.watch("ota run: registry writer", child.pid)
            _, lat, lost = burst_then_paced(port, meter, burst, seconds, "product", throughput)
            p99.product.append(percentile(lat, 99))
            samples["ota run"].extend(lat)
            lost_total += lost
        # Ceiling: the amqtt broker alone, answered by the do-nothing responder.
        with amqtt_broker() as (port, broker_pid):
            meter = CpuMeter()
            meter.watch("amqtt broker", broker_pid)
            with do_nothing_responder(None, size, meter, port=port):
                _, lat, _ = burst_then_paced(port, meter, burst, seconds, "ceiling", throughput)
            p99.ceiling.append(percentile(lat, 99))
            samples["ceiling (amqtt + paho responder)"].extend(lat)
    throughput.notes = (
        f"burst of {burst:,} then {seconds:.0f} s paced at half the rate reached; "
        f"offers lost over {ctx.rounds} rounds: {lost_total}"
    )
    lost = Result(
        "embedded", f"offers lost, all {ctx.rounds} rounds", "offers", [float(lost_total)],
        higher_is_better=False, goal="0", goal_absolute=0.0,
        notes="announcements (burst + paced) that never got their offer",
    )
    p99.samples = samples
    p99.notes = "each side paced at half its own burst rate"
    return [throughput, p99, lost]


def burst_then_paced(
    port: int, meter: CpuMeter, burst: int, seconds: float, kind: str, throughput: Result
) -> tuple[float, list[float], int]:
    """The 1,000-device fleet on ``port``: a burst (its rate goes into ``throughput``),
    then ``seconds`` paced at half that rate. Returns (rate, latencies in ms, lost)."""
    fleet = Fleet("127.0.0.1", port, SHAPE)
    try:
        fleet.watch(meter)
        meter.start()
        replies = fleet.command("burst", burst // len(fleet.pipes), SETTLE_SECONDS)
        add_cpu(throughput.cpu, {f"{kind}: {k}": v for k, v in meter.stop().items()})
        rate, received, sent = burst_rate(replies)
        getattr(throughput, kind).append(rate)
        paced = fleet.command("paced", rate / 2 / len(fleet.pipes), seconds, SETTLE_SECONDS)
    finally:
        fleet.close()
    lat = [x * 1000 for r in paced for x in r["latencies"]]
    lost = (sent - received) + sum(r["sent"] - r["received"] for r in paced)
    print(f"    {kind}: {rate:,.0f}/s ({received}/{sent}); paced p99 {percentile(lat, 99):.1f} ms; lost {lost}", flush=True)
    return rate, lat, lost


def offer_size_on(port: int) -> int:
    """Bytes of one real offer from ``ota run`` (the ceiling answers with that size)."""
    from tests.support import MqttProbe

    probe = MqttProbe(f"mqtt://127.0.0.1:{port}")
    try:
        probe.subscribe("ota/v1/devices/size-probe/offer")
        probe.publish(
            "ota/v1/devices/size-probe/announce",
            b'{"build_id":"build-1","version":"1.0.0","request_id":"size"}',
        )
        return len(probe.expect(30).payload)
    finally:
        probe.close()
