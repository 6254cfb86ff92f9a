#!/usr/bin/env python3
"""Loopback data-channel throughput, all with seed 004's framing (48 KiB chunks) and the sender
pausing above 1 MiB buffered, in one run:

- ferry ↔ ferry: `ferry send` to `ferry recv` (release builds, separate processes, meeting in a
  room of `ferry serve`), timed from start to the sender's verified result, peak RSS of both;
- aiortc ↔ aiortc: two peers in one Python process;
- Chromium ↔ Chromium: two peers in one headless page (browser-tests/bench-datachannel.mjs).

Then ferry ↔ ferry again at 1 GiB, to show both ends' memory does not grow with the file.

    RUNS=3 MIB=256 python3 bench/datachannel.py

With TURN=1 it compares ferry ↔ ferry direct with ferry ↔ ferry through a TURN relay instead
(coturn on loopback, both ends `--relay-only`, so every packet goes through it), run for run.
"""
import asyncio
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERRY = os.path.join(ROOT, "target", "release", "ferry")
RUNS = int(os.environ.get("RUNS", "3"))
MIB = int(os.environ.get("MIB", "256"))
TOKEN = "bench"
CHUNK = 48 * 1024


def ferry_pair(work, size_mib, room, extra=()):
    """One ferry send → ferry recv (both given `extra` flags); returns (seconds, sender RSS MiB,
    receiver RSS MiB)."""
    src = os.path.join(work, f"src-{size_mib}.bin")
    if not os.path.exists(src):
        with open(src, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
    out = os.path.join(work, f"out-{room}")
    env = {**os.environ, "FERRY_LOG": "warn"}
    recv = subprocess.Popen(["/usr/bin/time", "-f", "RSS %M", FERRY, "recv", "--room", room, "--out", out,
                             "--peer-id", "receiver", "--json", "--server", SERVER, "--token", TOKEN, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert '"waiting"' in recv.stdout.readline()
    t0 = time.monotonic()
    send = subprocess.run(["/usr/bin/time", "-f", "RSS %M", FERRY, "send", src, "--room", room, "--to", "receiver",
                           "--no-progress", "--server", SERVER, "--token", TOKEN, *extra],
                          capture_output=True, text=True, env=env)
    seconds = time.monotonic() - t0
    assert send.returncode == 0, send.stderr
    _, recv_err = recv.communicate(timeout=120)
    rss = lambda text: int(re.search(r"RSS (\d+)", text).group(1)) / 1024
    shutil.rmtree(out, ignore_errors=True)
    return seconds, rss(send.stderr), rss(recv_err)


async def send_zeros(ch, total):
    """Sends `total` seed-004 frames of zeros on aiortc channel `ch`, pausing above 1 MiB buffered."""
    payload = bytes(CHUNK)
    for i in range(total):
        while ch.bufferedAmount > 1024 * 1024:
            await asyncio.sleep(0.001)
        ch.send(struct.pack("<II", i, total) + payload)


async def aiortc_pair(size_mib):
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ch = a.createDataChannel("video_upload")
    total = size_mib * 1024 * 1024 // CHUNK
    done = asyncio.Event()
    got = 0

    @b.on("datachannel")
    def on_channel(channel):
        @channel.on("message")
        def on_message(_):
            nonlocal got
            got += 1
            if got == total:
                done.set()

    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    opened = asyncio.Event()
    ch.on("open", opened.set)
    if ch.readyState != "open":
        await opened.wait()
    t0 = time.monotonic()
    await send_zeros(ch, total)
    await done.wait()
    seconds = time.monotonic() - t0
    await a.close()
    await b.close()
    return seconds


def chromium_pair(size_mib):
    out = subprocess.run(["node", "bench-datachannel.mjs"], cwd=os.path.join(ROOT, "browser-tests"),
                         capture_output=True, text=True, env={**os.environ, "MIB": str(size_mib)}, check=True).stdout
    return float(re.search(r"in ([0-9.]+) s", out).group(1))


def turn_runs(work, mb):
    """Direct and relayed ferry pairs, alternating; prints each run and the medians."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    coturn = subprocess.Popen(["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--listening-ip=127.0.0.1",
                               "--relay-ip=127.0.0.1", f"--listening-port={port}", "--lt-cred-mech",
                               "--user=bench:bench", "--realm=ferry.bench", "--allow-loopback-peers"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    relay = ["--ice-server", f"turn:bench:bench@127.0.0.1:{port}", "--relay-only"]
    try:
        direct, relayed = [], []
        for run in range(1, RUNS + 1):
            d, _, _ = ferry_pair(work, MIB, f"direct-{run}")
            r, srss, rrss = ferry_pair(work, MIB, f"relayed-{run}", relay)
            direct.append(mb / d)
            relayed.append(mb / r)
            print(f"run {run}: direct {mb / d:.1f} MB/s   through coturn {mb / r:.1f} MB/s "
                  f"(send RSS {srss:.1f} MiB, recv RSS {rrss:.1f} MiB)", flush=True)
        d, r = statistics.median(direct), statistics.median(relayed)
        print(f"median {MIB} MiB: direct {d:.1f} MB/s, through coturn {r:.1f} MB/s ({r / d:.2f}x)")
    finally:
        coturn.kill()


def main():
    global SERVER
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="ferry-dc-bench-")
    serve = subprocess.Popen([FERRY, "serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir",
                              os.path.join(work, "data")], stdout=subprocess.PIPE, text=True)
    SERVER = re.search(r"http://[0-9.:]+", serve.stdout.readline()).group(0)
    mb = MIB * 1048576 / 1e6
    if os.environ.get("TURN"):
        try:
            return turn_runs(work, mb)
        finally:
            serve.kill()
            shutil.rmtree(work, ignore_errors=True)
    try:
        rows = {"ferry": [], "aiortc": [], "chromium": []}
        rss = []
        for run in range(1, RUNS + 1):
            f, srss, rrss = ferry_pair(work, MIB, f"bench-{run}")
            rss.append((srss, rrss))
            a = asyncio.run(aiortc_pair(MIB))
            c = chromium_pair(MIB)
            rows["ferry"].append(mb / f)
            rows["aiortc"].append(mb / a)
            rows["chromium"].append(mb / c)
            print(f"run {run}: ferry {mb / f:.1f} MB/s (send RSS {srss:.1f} MiB, recv RSS {rrss:.1f} MiB)   "
                  f"aiortc {mb / a:.1f} MB/s   chromium {mb / c:.1f} MB/s", flush=True)
        m = {k: statistics.median(v) for k, v in rows.items()}
        print(f"median {MIB} MiB: ferry {m['ferry']:.1f} MB/s, aiortc {m['aiortc']:.1f} MB/s, chromium "
              f"{m['chromium']:.1f} MB/s; ferry/aiortc {m['ferry'] / m['aiortc']:.1f}x, "
              f"ferry/chromium {m['ferry'] / m['chromium']:.1f}x")
        f, srss, rrss = ferry_pair(work, 1024, "bench-1g")
        print(f"1 GiB ferry: {1073.741824 / f:.1f} MB/s, send RSS {srss:.1f} MiB, recv RSS {rrss:.1f} MiB "
              f"(at {MIB} MiB: send {statistics.median(r[0] for r in rss):.1f}, "
              f"recv {statistics.median(r[1] for r in rss):.1f})")
    finally:
        serve.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
