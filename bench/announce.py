"""Rough announce→offer throughput: the bridge vs a do-nothing paho responder, via Mosquitto.

usage: .venv/bin/python /tmp/bench/announce_bench.py [--n 20000] [--devices 1000] [--pubs 2]
Run from the repo root (uses tests.support.mosquitto to start the repo's mosquitto.conf).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.getcwd())
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PREFIX = "ota/v1"


def nodelay(_c, _u, sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client(cid, protocol="3.1.1", inflight=None):
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cid,
        protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
    )
    c.on_socket_open = nodelay
    if inflight:
        c.max_inflight_messages_set(inflight)
    return c


def do_nothing_responder(port, payload_size, ready, stop, protocol, inflight):
    payload = b"x" * payload_size
    c = client("ceiling", protocol, inflight)

    def on_message(cl, u, m):
        device = m.topic.split("/")[3]
        cl.publish(f"{PREFIX}/devices/{device}/offer", payload, qos=1)

    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.subscribe(f"{PREFIX}/devices/+/announce", qos=1)
    c.loop_start()
    stop.wait()
    c.disconnect()
    c.loop_stop()


def bridge_responder(port, workdir, ready, stop, protocol):
    import logging

    logging.basicConfig(level=logging.WARNING)
    from broker_bridge.bridge import Bridge
    from ota_core.keyfiles import ensure_release_keys
    from ota_core.releases import ReleaseRequest
    from ota_core.services import Services
    from ota_core.settings import Settings

    root = Path(workdir)
    ensure_release_keys(root / "keys")
    if os.environ.get("SEALED"):
        from ota_core.keyfiles import ensure_offer_key, load_signer

        ensure_offer_key(root / "keys", load_signer(root / "keys"))
    s = Settings(
        data_dir=root / "data",
        keys_dir=root / "keys",
        packages_dir=root / "packages",
        broker_url=f"mqtt://127.0.0.1:{port}",
        mqtt_protocol=protocol,
        mqtt_client_id=f"bridge-{uuid.uuid4().hex[:6]}",
    )
    services = Services.from_settings(s)
    if not len(services.catalog.current):
        services.releases.add_upload(
            ReleaseRequest("build-2", "2.0.0", "fw-2.bin"), [b"f" * 100000], 10**7
        )
        services.catalog.refresh()
    if os.environ.get("NOREG"):
        services.registry.apply = lambda batch: None
    if os.environ.get("INFLIGHT"):
        import broker_bridge.bridge as bb

        bb.MAX_INFLIGHT_OFFERS = int(os.environ["INFLIGHT"])
    b = Bridge(s, services)
    b.start()
    assert b.wait_ready(20)
    ready.set()
    stop.wait()
    b.stop()
    print(
        "bridge stats",
        b.stats.snapshot(),
        "registry rows",
        len(services.registry.all()),
        flush=True,
    )
    services.close()


def collector(port, n, result_q, ready):
    got = 0
    first = last = None
    c = client(f"collector-{uuid.uuid4().hex[:6]}")
    import threading

    finished = threading.Event()
    sizes = []

    def on_message(cl, u, m):
        nonlocal got, first, last
        now = time.time()
        if first is None:
            first = now
            sizes.append(len(m.payload))
        got += 1
        last = now
        if got >= n:
            finished.set()

    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.subscribe(f"{PREFIX}/devices/+/offer", qos=1)
    c.loop_start()
    # stop when all arrived, or nothing new for 10 s
    seen = -1
    while not finished.wait(10):
        if got == seen:
            break
        seen = got
    c.disconnect()
    c.loop_stop()
    result_q.put((got, first, last, sizes[:1]))


def publisher(port, k, n, devices, start_q, go):
    c = client(f"pub-{k}-{uuid.uuid4().hex[:6]}", inflight=1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    build = os.environ.get("ANNOUNCE_BUILD", "build-1")
    payloads = [
        json.dumps({"build_id": build, "version": "1.0.0", "request_id": f"r{i}"}).encode()
        for i in range(200)
    ]
    go.wait()
    start_q.put(time.time())
    infos = []
    for i in range(n):
        d = f"p{k}-d{i % devices}"
        infos.append(c.publish(f"{PREFIX}/devices/{d}/announce", payloads[i % 200], qos=1))
    for info in infos[-1:]:
        info.wait_for_publish(120)
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()


def run(kind, port, args, workdir):
    ctx = mp.get_context("fork")
    ready, stop, go = ctx.Event(), ctx.Event(), ctx.Event()
    if kind == "ceiling":
        resp = ctx.Process(
            target=do_nothing_responder,
            args=(port, args.payload, ready, stop, args.protocol, args.ceiling_inflight),
        )
    else:
        resp = ctx.Process(
            target=bridge_responder, args=(port, workdir, ready, stop, args.protocol)
        )
    resp.start()
    assert ready.wait(60)
    result_q, start_q, cready = ctx.Queue(), ctx.Queue(), ctx.Event()
    col = ctx.Process(target=collector, args=(port, args.n, result_q, cready))
    col.start()
    assert cready.wait(20)
    per = args.n // args.pubs
    pubs = [
        ctx.Process(target=publisher, args=(port, k, per, args.devices // args.pubs, start_q, go))
        for k in range(args.pubs)
    ]
    for p in pubs:
        p.start()
    time.sleep(1.0)
    go.set()
    starts = [start_q.get(timeout=60) for _ in pubs]
    got, _first, last, sizes = result_q.get(timeout=600)
    for p in pubs:
        p.join()
    col.join()
    stop.set()
    resp.join(60)
    start = min(starts)
    rate = got / (last - start) if got else 0
    print(
        f"{kind:8s} offers={got}/{args.n} time={last - start:.2f}s rate={rate:,.0f}/s offer_bytes={sizes}",
        flush=True,
    )
    return rate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--pubs", type=int, default=2)
    ap.add_argument("--payload", type=int, default=1650)
    ap.add_argument("--protocol", default="3.1.1")
    ap.add_argument("--ceiling-inflight", type=int, default=0, help="0 = paho default (20)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    from tests.support.mosquitto import start_mosquitto

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    broker = start_mosquitto(work / "mosquitto", extra_options=["max_queued_messages 1000000"])
    try:
        res = {"ceiling": [], "bridge": []}
        for _r in range(args.rounds):
            for kind in ("ceiling", "bridge"):
                if args.only and kind != args.only:
                    continue
                res[kind].append(run(kind, broker.port, args, work / "ota"))
        for k, v in res.items():
            if v:
                v.sort()
                print(k, "median", f"{v[len(v) // 2]:,.0f}/s", "all", [round(x) for x in v])
        if res["ceiling"] and res["bridge"]:
            c = sorted(res["ceiling"])[len(res["ceiling"]) // 2]
            b = sorted(res["bridge"])[len(res["bridge"]) // 2]
            print(f"ratio bridge/ceiling = {b / c:.2f}")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
