#!/usr/bin/env python3
"""Time from a job_request to the client's first progress message, over JOBS jobs run one after
another by one `ferry worker` (release builds, loopback, embedded store).

Each `ferry submit --json` prints its messages with `elapsed_ms` since it sent the request; the
first `progress` is the command's first JSON line, so the time covers the worker accepting, the
job joining the room as its own peer, the WebRTC connection (ICE, DTLS, SCTP), downloading the
64 KiB input, starting the command and its first line reaching the client. `accepted` and the
`running` state split it up.

    JOBS=100 python3 bench/jobs.py
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERRY = os.path.join(ROOT, "target", "release", "ferry")
JOBS = int(os.environ.get("JOBS", "100"))
TOKEN = "bench"


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="ferry-jobs-bench-")
    serve = subprocess.Popen([FERRY, "serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir",
                              os.path.join(work, "data")], stdout=subprocess.PIPE, text=True)
    server = re.search(r"http://[0-9.:]+", serve.stdout.readline()).group(0)
    env = {**os.environ, "FERRY_LOG": "warn", "FERRY_SERVER": server, "FERRY_TOKEN": TOKEN,
           "FERRY_STATE_DIR": os.path.join(work, "state")}
    script = os.path.join(work, "job.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\necho \'{"started": true}\'\nwc -c < "$1" > "$2/count.txt"\n')
    worker = None
    try:
        src = os.path.join(work, "input.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(64 * 1024))
        subprocess.run([FERRY, "put", src, "--key", "bench/input.bin", "--no-progress"], env=env, check=True,
                       capture_output=True)
        worker = subprocess.Popen([FERRY, "worker", "--room", "bench", "--name", "w1", "--exec",
                                   f"sh {script} {{input}} {{output_dir}}", "--work-dir", os.path.join(work, "w")],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first, accepted, running = [], [], []
        for i in range(JOBS):
            out = subprocess.run([FERRY, "submit", "--room", "bench", "--to", "w1", "--job-id", f"j{i}", "--json",
                                  "bench/input.bin"], env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            lines = [json.loads(l) for l in out.stdout.splitlines()]
            accepted.append(next(l["elapsed_ms"] for l in lines if l["type"] == "accepted"))
            running.append(next(l["elapsed_ms"] for l in lines if l["type"] == "state" and l["state"] == "running"))
            first.append(next(l["elapsed_ms"] for l in lines if l["type"] == "progress"))
        for name, v in [("accepted", accepted), ("running", running), ("first progress", first)]:
            print(f"{name:>15}: median {statistics.median(v):.1f} ms, p90 {pct(v, 90):.1f} ms, "
                  f"min {min(v):.1f} ms, max {max(v):.1f} ms  ({len(v)} jobs)")
    finally:
        if worker:
            worker.kill()
        serve.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
