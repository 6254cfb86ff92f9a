#!/usr/bin/env python3
"""Several `ferry serve` instances on one bucket (s3s-fs) and one Redis bus, on 127.0.0.1.

1. Cross-instance event latency: an upload created on instance A, its event stream held by
   instance B; each part is PUT to the bucket and reported to A (`POST .../parts/N/done`). For
   each part, the time from that 200 to B's stream delivering the part's `part_received`.
   Baseline, alternated with it in the same run: the same instances without a bus (B only finds
   A's events when it next reads the store).
2. Signaling round trip: peer a sends `peer_message` to b, b sends it back; a on instance 0, b on
   the same instance or on another, alternated.
3. PEERS peers joining rooms of 50 spread over three instances, JOINERS at a time: each join's
   latency (connect, `join`, `joined`) and each instance's RSS before and after.

    pip install websockets  # the benchmark's WebSocket client
    ROUNDS=3 PARTS=60 MESSAGES=500 PEERS=1000 python3 bench/cluster.py
"""

import asyncio
import http.client
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import websockets

ROUNDS = int(os.environ.get("ROUNDS", "3"))
PARTS = int(os.environ.get("PARTS", "60"))
MESSAGES = int(os.environ.get("MESSAGES", "500"))
PEERS = int(os.environ.get("PEERS", "1000"))
JOINERS = int(os.environ.get("JOINERS", "50"))
PART = 5 * 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "ferry")
KEY, SECRET, BUCKET = "benchkey", "bench-secret-key-0123456789", "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


class Cluster:
    def __init__(self, work, bus, n=3):
        self.procs = []
        root = os.path.join(work, "s3")
        os.makedirs(os.path.join(root, BUCKET), exist_ok=True)
        s3 = free_port()
        self.procs.append(subprocess.Popen(
            ["s3s-fs", "--host", "127.0.0.1", "--port", str(s3), "--access-key", KEY, "--secret-key", SECRET, root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(s3)
        args = []
        if bus:
            port = free_port()
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL))
            wait_port(port)
            args = ["--bus", f"redis://127.0.0.1:{port}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, FERRY_LOG="warn")
        self.urls, self.servers = [], []
        for i in range(n):
            p = subprocess.Popen(
                [EXE, "serve", "--listen", "127.0.0.1:0", "--token", "t", "--data-dir", os.path.join(work, f"d{i}"),
                 "--store", f"s3://{BUCKET}/bench", "--s3-endpoint", f"http://127.0.0.1:{s3}", "--s3-path-style",
                 "--signal-rate", "10000"] + args,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            self.procs.append(p)
            self.servers.append(p)
            self.urls.append(re.search(r"http://[0-9.:]+", p.stdout.readline()).group(0))

    def rss_mib(self):
        out = []
        for p in self.servers:
            with open(f"/proc/{p.pid}/status") as f:
                kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            out.append(kb / 1024)
        return out

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()


def request(url, method, path, body=None, headers=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    return res.status, res.headers, res.read()


AUTH = {"Authorization": "Bearer t", "Content-Type": "application/json"}


def event_latency(cluster):
    a, b = cluster.urls[0], cluster.urls[1]
    status, _, body = request(a, "POST", "/v1/uploads", json.dumps(
        {"name": f"latency-{time.monotonic_ns()}", "size": PARTS * PART, "part_size": PART}), AUTH)
    assert status == 201, body
    created = json.loads(body)
    upload_id = created["upload_id"]
    seen, ready = {}, threading.Event()

    def follow():
        u = urllib.parse.urlsplit(b)
        conn = http.client.HTTPConnection(u.hostname, u.port)
        conn.request("GET", f"/v1/uploads/{upload_id}/events", headers={"Authorization": "Bearer t"})
        res = conn.getresponse()
        ready.set()
        while len(seen) < PARTS:
            line = res.fp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                ev = json.loads(line[6:])
                if ev["type"] == "part_received":
                    seen.setdefault(ev["part_number"], time.monotonic())

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    ready.wait()
    payload = os.urandom(PART)
    acked = {}
    for p in created["parts"]:
        u = urllib.parse.urlsplit(p["url"])
        conn = http.client.HTTPConnection(u.hostname, u.port)
        headers = {k: v for k, v in (p.get("headers") or {}).items()}
        headers["Content-Length"] = str(PART)
        conn.request("PUT", f"{u.path}?{u.query}", body=payload, headers=headers)
        res = conn.getresponse()
        res.read()
        assert res.status == 200, res.status
        etag = res.headers["ETag"]
        n = p["part_number"]
        status, _, body = request(a, "POST", f"/v1/uploads/{upload_id}/parts/{n}/done",
                                  json.dumps({"etag": etag, "size": PART}), AUTH)
        acked[n] = time.monotonic()
        assert status == 200, body
        time.sleep(0.05)
    t.join(timeout=60)
    assert len(seen) == PARTS, f"only {len(seen)} of {PARTS} parts streamed"
    request(a, "DELETE", f"/v1/uploads/{upload_id}", headers=AUTH)
    return sorted((seen[n] - acked[n]) * 1000 for n in acked)


def signal_url(url):
    return url.replace("http://", "ws://") + "/v1/signal"


async def join(url, room, peer_id=None):
    ws = await websockets.connect(signal_url(url), max_size=None)
    msg = {"type": "join", "room": room, "role": "peer", "token": "t"}
    if peer_id:
        msg["peer_id"] = peer_id
    await ws.send(json.dumps(msg))
    while True:
        m = json.loads(await ws.recv())
        if m["type"] == "joined":
            return ws, m["peer_id"]
        if m["type"] == "error":
            raise RuntimeError(m)


async def round_trips(url_a, url_b, room):
    a, _ = await join(url_a, room, "a")
    b, _ = await join(url_b, room, "b")

    async def echo():
        while True:
            m = json.loads(await b.recv())
            if m["type"] == "peer_message":
                await b.send(json.dumps({"type": "peer_message", "to": "a", "payload": m["payload"]}))

    task = asyncio.create_task(echo())
    rtts = []
    for i in range(MESSAGES):
        start = time.monotonic()
        await a.send(json.dumps({"type": "peer_message", "to": "b", "payload": {"i": i}}))
        while True:
            m = json.loads(await a.recv())
            if m["type"] == "peer_message" and m["payload"]["i"] == i:
                break
        rtts.append((time.monotonic() - start) * 1000)
    task.cancel()
    await a.close()
    await b.close()
    return sorted(rtts)


async def many_joins(cluster):
    sem = asyncio.Semaphore(JOINERS)
    latencies, sockets = [], []

    async def one(i):
        async with sem:
            start = time.monotonic()
            ws, _ = await join(cluster.urls[i % len(cluster.urls)], f"crowd-{i // 50}")
            latencies.append((time.monotonic() - start) * 1000)
            sockets.append(ws)

    await asyncio.gather(*(one(i) for i in range(PEERS)))
    return sorted(latencies), sockets


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def line(label, xs):
    return f"{label}: median {statistics.median(xs):.2f} ms, p99 {pct(xs, 0.99):.2f} ms, max {xs[-1]:.2f} ms"


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "ferry"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="ferry-cluster-")
    try:
        bus = Cluster(os.path.join(work, "bus"), bus=True)
        nobus = Cluster(os.path.join(work, "nobus"), bus=False)
        try:
            print(f"1. {PARTS} parts of 5 MiB reported to instance A, streamed by instance B")
            ratios = []
            for r in range(ROUNDS):
                with_bus = event_latency(bus)
                without = event_latency(nobus)
                ratios.append(statistics.median(without) / statistics.median(with_bus))
                print(f"  round {r + 1}: " + line("bus", with_bus))
                print(f"  round {r + 1}: " + line("no bus (store poll)", without))
            print(f"  median of the no-bus/bus ratios of medians: {statistics.median(ratios):.1f}x")
        finally:
            nobus.stop()

        print(f"2. signaling round trips ({MESSAGES} per run)")
        ratios = []
        for r in range(ROUNDS):
            same = asyncio.run(round_trips(bus.urls[0], bus.urls[0], f"rtt-same-{r}"))
            cross = asyncio.run(round_trips(bus.urls[0], bus.urls[1], f"rtt-cross-{r}"))
            ratios.append(statistics.median(cross) / statistics.median(same))
            print(f"  round {r + 1}: " + line("one instance", same))
            print(f"  round {r + 1}: " + line("across two", cross))
        print(f"  median of the across/one ratios of medians: {statistics.median(ratios):.2f}x")

        print(f"3. {PEERS} peers joining rooms of 50 over three instances, {JOINERS} at a time")
        before = bus.rss_mib()

        async def crowd():
            lat, sockets = await many_joins(bus)
            after = bus.rss_mib()
            for ws in sockets:
                await ws.close()
            return lat, after

        lat, after = asyncio.run(crowd())
        print("  " + line("join", lat))
        for i, (b0, a0) in enumerate(zip(before, after)):
            print(f"  instance {i}: RSS {b0:.1f} MiB before, {a0:.1f} MiB with its {PEERS // 3} peers")
        bus.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
