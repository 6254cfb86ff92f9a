#!/usr/bin/env python3
"""Latency from a part's 200 to its `part_processed` event, with a trivial processor (`wc -c`).

Starts `ferry serve` (release build) on 127.0.0.1 with a temp data dir, creates one upload of PARTS
parts of 64 KiB with the processor, follows its event stream, and PUTs the parts one after another
through their signed URLs. For each part it records when the PUT's 200 arrived and when the stream
delivered the part's `part_processed`, and prints the median and p99 of the difference.

Two runs: paced (a part every PACE_MS, so the processor keeps up and the figure is the pipeline's
own latency) and unpaced (as fast as one client sends; the figure then includes queueing behind the
processing concurrency of 3).

    PARTS=1000 PACE_MS=20 python3 bench/processing-latency.py
"""

import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

PARTS = int(os.environ.get("PARTS", "1000"))
PACE_MS = float(os.environ.get("PACE_MS", "20"))
PART = 64 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(data_dir):
    exe = os.path.join(ROOT, "target", "release", "ferry")
    proc = subprocess.Popen(
        [exe, "serve", "--listen", "127.0.0.1:0", "--token", "t", "--data-dir", data_dir,
         "--part-processor", "count=wc -c"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    url = re.search(r"http://[0-9.:]+", line).group(0)
    return proc, urllib.parse.urlsplit(url)


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    return res.status, data


def run(addr, paced):
    api = http.client.HTTPConnection(addr.hostname, addr.port)
    auth = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    size = PARTS * PART
    status, body = request(api, "POST", "/v1/uploads", json.dumps(
        {"name": f"latency-{paced}", "size": size, "part_size": PART, "processor": "count"}), auth)
    assert status == 201, body
    created = json.loads(body)
    upload_id = created["upload_id"]

    processed = {}
    ready = threading.Event()

    def follow():
        conn = http.client.HTTPConnection(addr.hostname, addr.port)
        conn.request("GET", f"/v1/uploads/{upload_id}/events", headers={"Authorization": "Bearer t"})
        res = conn.getresponse()
        ready.set()
        while len(processed) < PARTS:
            line = res.fp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                ev = json.loads(line[6:])
                if ev["type"] == "part_processed":
                    processed.setdefault(ev["part_number"], time.monotonic())

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    ready.wait()
    payload = os.urandom(PART)
    acked = {}
    put = http.client.HTTPConnection(addr.hostname, addr.port)
    for p in created["parts"]:
        u = urllib.parse.urlsplit(p["url"])
        status, body = request(put, "PUT", f"{u.path}?{u.query}", payload, {"Content-Length": str(PART)})
        acked[p["part_number"]] = time.monotonic()
        assert status == 200, body
        if paced:
            time.sleep(PACE_MS / 1000)
    t.join(timeout=120)
    assert len(processed) == PARTS, f"only {len(processed)} of {PARTS} parts processed"
    lat = sorted((processed[n] - acked[n]) * 1000 for n in acked)
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], lat[-1]


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    data_dir = tempfile.mkdtemp(prefix="ferry-latency-")
    proc, addr = start_server(data_dir)
    try:
        for paced in (True, False):
            med, p99, worst = run(addr, paced)
            label = f"paced, a part every {PACE_MS:g} ms" if paced else "unpaced, back to back"
            print(f"{PARTS} parts of 64 KiB, {label}: 200 -> part_processed median {med:.2f} ms, "
                  f"p99 {p99:.2f} ms, max {worst:.2f} ms")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
