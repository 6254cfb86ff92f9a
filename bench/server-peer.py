#!/usr/bin/env python3
"""`ferry serve`'s own WebRTC peer as real clients meet it, on 127.0.0.1 (release build):

1. aiortc → ferry serve and Chromium → ferry serve, MIB mebibytes each in seed 004's framing
   (POST /v1/rtc/offer, `video_upload`, 48 KiB chunks, the sender pausing above 1 MiB
   buffered), timed from the first chunk to the server's `complete` (stored and hashed); next
   to aiortc ↔ aiortc and Chromium ↔ Chromium (bench/datachannel.py's), run for run in the
   order A B A B.
2. PEERS `ferry send FILE --to ferry` at once (PEER_MIB each) into a server whose peers share
   one UDP port (--rtc-udp-port): the server's CPU seconds per GiB received (utime + stime from
   /proc) and its peak RSS (VmHWM); next to the same with a port per peer, alternated, RUNS
   times each.

    RUNS=3 MIB=256 PEERS=20 PEER_MIB=32 python3 bench/server-peer.py
"""
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import aiortc_sends_to_ferry as seed004  # noqa: E402
import datachannel  # noqa: E402

ROOT = datachannel.ROOT
FERRY = datachannel.FERRY
RUNS = int(os.environ.get("RUNS", "3"))
MIB = int(os.environ.get("MIB", "256"))
PEERS = int(os.environ.get("PEERS", "20"))
PEER_MIB = int(os.environ.get("PEER_MIB", "32"))
CHUNK = 48 * 1024


def serve(work, *extra):
    env = {**os.environ, "FERRY_LOG": "warn"}
    proc = subprocess.Popen([FERRY, "serve", "--listen", "127.0.0.1:0", "--token", seed004.TOKEN,
                             "--data-dir", os.path.join(work, "data"), *extra],
                            stdout=subprocess.PIPE, text=True, env=env)
    url = re.search(r"http://[0-9.:]+", proc.stdout.readline()).group(0)
    return proc, url


async def aiortc_to_ferry(url, size_mib):
    """Seconds from the first chunk to `complete`."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    import json

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ch = pc.createDataChannel("video_upload")
    answers, opened = asyncio.Queue(), asyncio.Event()
    ch.on("open", opened.set)
    ch.on("message", lambda m: isinstance(m, str) and answers.put_nowait(json.loads(m)))
    await pc.setLocalDescription(await pc.createOffer())
    answer = json.loads(seed004.api(url, "/rtc/offer", {"type": "offer", "sdp": pc.localDescription.sdp}))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await asyncio.wait_for(opened.wait(), 30)
    t0 = time.monotonic()
    await datachannel.send_zeros(ch, size_mib * 1024 * 1024 // CHUNK)
    done = await asyncio.wait_for(answers.get(), 600)
    seconds = time.monotonic() - t0
    assert done["type"] == "complete", done
    await pc.close()
    return seconds


def chromium_to_ferry(url, size_mib):
    env = {**os.environ, "MIB": str(size_mib), "FERRY_URL": url, "FERRY_TOKEN": seed004.TOKEN}
    out = subprocess.run(["node", "bench-to-ferry.mjs"], cwd=os.path.join(ROOT, "browser-tests"),
                         capture_output=True, text=True, env=env, check=True).stdout
    return float(re.search(r"in ([0-9.]+) s", out).group(1))


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024


def many_at_once(work, one_port):
    proc, url = serve(work, *(["--rtc-udp-port", "0"] if one_port else []))
    try:
        src = os.path.join(work, "peer.bin")
        with open(src, "wb") as f:
            for _ in range(PEER_MIB):
                f.write(os.urandom(1 << 20))
        env = {**os.environ, "FERRY_LOG": "warn"}
        cpu0, t0 = proc_cpu(proc.pid), time.monotonic()
        senders = [subprocess.Popen([FERRY, "send", src, "--room", "bench", "--to", "ferry", "--as", f"many/{i}.bin",
                                     "--no-progress", "--server", url, "--token", seed004.TOKEN],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                   for i in range(PEERS)]
        for s in senders:
            _, err = s.communicate(timeout=1200)
            assert s.returncode == 0, err
        seconds, cpu = time.monotonic() - t0, proc_cpu(proc.pid) - cpu0
        gib = PEERS * PEER_MIB / 1024
        return seconds, cpu / gib, proc_hwm(proc.pid), PEERS * PEER_MIB * 1048576 / seconds / 1e6
    finally:
        proc.kill()
        proc.wait()


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "ferry"], cwd=ROOT, check=True)
    rows = []
    work = tempfile.mkdtemp(prefix="ferry-server-peer-")
    try:
        for r in range(RUNS):
            proc, url = serve(os.path.join(work, f"r{r}"))
            try:
                a_ferry = asyncio.run(aiortc_to_ferry(url, MIB))
                a_pair = asyncio.run(datachannel.aiortc_pair(MIB))
                c_ferry = chromium_to_ferry(url, MIB)
                c_pair = datachannel.chromium_pair(MIB)
            finally:
                proc.kill()
                proc.wait()
            mbps = [MIB * 1048576 / s / 1e6 for s in (a_ferry, a_pair, c_ferry, c_pair)]
            rows.append(mbps)
            print(f"run {r + 1}: aiortc→ferry {mbps[0]:.1f}, aiortc↔aiortc {mbps[1]:.1f}, "
                  f"Chromium→ferry {mbps[2]:.1f}, Chromium↔Chromium {mbps[3]:.1f} MB/s", flush=True)
        med = [statistics.median(col) for col in zip(*rows)]
        print(f"median: aiortc→ferry {med[0]:.1f}, aiortc↔aiortc {med[1]:.1f}, Chromium→ferry {med[2]:.1f}, "
              f"Chromium↔Chromium {med[3]:.1f} MB/s")
        print(f"median of per-run ratios: aiortc→ferry / aiortc↔aiortc "
              f"{statistics.median(r[0] / r[1] for r in rows):.2f}x, Chromium→ferry / Chromium↔Chromium "
              f"{statistics.median(r[2] / r[3] for r in rows):.2f}x")
        cpu = {True: [], False: []}
        for r in range(RUNS):
            for one_port in (True, False):
                seconds, cpu_per_gib, hwm, mbps = many_at_once(os.path.join(work, f"many-{r}-{one_port}"), one_port)
                cpu[one_port].append(cpu_per_gib)
                where = "on one UDP port" if one_port else "a port each"
                print(f"run {r + 1}: {PEERS} peers × {PEER_MIB} MiB at once, {where}: {seconds:.1f} s "
                      f"({mbps:.1f} MB/s in all), server {cpu_per_gib:.1f} CPU-s/GiB, peak RSS {hwm:.1f} MiB",
                      flush=True)
        ratio = statistics.median(a / b for a, b in zip(cpu[True], cpu[False]))
        print(f"server CPU per GiB, one port / a port each, median of per-run ratios: {ratio:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
