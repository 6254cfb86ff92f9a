#!/usr/bin/env python3
"""Data-channel uploads into `ferry serve`'s own store: `ferry send FILE --room R --to ferry`
(release builds, loopback, the embedded store on disk), and what each byte costs the server.

Per run: seconds from start to the sender's verified result; the server's bytes written to the
storage layer (`write_bytes` of /proc/PID/io) and passed to write calls (`wchar`), each per byte
of the file; the server's CPU seconds per GiB. With FERRY_OLD set to another ferry binary (for
example one built from an earlier commit), that one runs too, alternating with the current one
run for run (A B A B), and the medians of the per-run ratios are printed.

    FERRY_OLD=/tmp/ferry-old/target/release/ferry RUNS=3 MIB=1024 python3 bench/ingest.py
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = os.path.join(ROOT, "target", "release", "ferry")
OLD = os.environ.get("FERRY_OLD")
RUNS = int(os.environ.get("RUNS", "3"))
MIB = int(os.environ.get("MIB", "1024"))
TOKEN = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def io_of(pid):
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["write_bytes"]), int(fields["wchar"])


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS


def one(exe, src, size):
    """One upload through a fresh server; returns (seconds, write_bytes/B, wchar/B, CPU-s/GiB)."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(src)) as data:
        server = subprocess.Popen([exe, "serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir", data],
                                  stdout=subprocess.PIPE, text=True, env={**os.environ, "FERRY_LOG": "warn"})
        try:
            url = re.search(r"http://[0-9.:]+", server.stdout.readline()).group(0)
            w0, c0 = io_of(server.pid)
            cpu0 = cpu_of(server.pid)
            t0 = time.monotonic()
            sent = subprocess.run([exe, "send", src, "--room", "bench", "--to", "ferry", "--no-progress",
                                   "--server", url, "--token", TOKEN],
                                  capture_output=True, text=True, env={**os.environ, "FERRY_LOG": "warn"})
            seconds = time.monotonic() - t0
            assert sent.returncode == 0, sent.stderr
            w1, c1 = io_of(server.pid)
            cpu = cpu_of(server.pid) - cpu0
        finally:
            server.kill()
            server.wait()
    return seconds, (w1 - w0) / size, (c1 - c0) / size, cpu / (size / (1 << 30))


def main():
    work = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR", ROOT + "/target"))
    src = os.path.join(work, "src.bin")
    with open(src, "wb") as f:
        for _ in range(MIB):
            f.write(os.urandom(1 << 20))
    size = MIB << 20
    builds = [("new", NEW)] + ([("old", OLD)] if OLD else [])
    rows = {name: [] for name, _ in builds}
    for run in range(RUNS):
        for name, exe in builds:
            r = one(exe, src, size)
            rows[name].append(r)
            print(f"run {run + 1} {name}: {r[0]:.1f} s ({size / r[0] / 1e6:.1f} MB/s), "
                  f"storage writes {r[1]:.2f} B/B, write calls {r[2]:.2f} B/B, server {r[3]:.2f} CPU-s/GiB",
                  flush=True)
    os.remove(src)
    os.rmdir(work)
    for name, runs in rows.items():
        med = lambda i: statistics.median(r[i] for r in runs)
        print(f"{name}: median {size / med(0) / 1e6:.1f} MB/s, storage writes {med(1):.2f} B/B, "
              f"write calls {med(2):.2f} B/B, server {med(3):.2f} CPU-s/GiB")
    if OLD:
        ratio = statistics.median(o[0] / n[0] for n, o in zip(rows["new"], rows["old"]))
        print(f"speed new/old, median of per-run ratios: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
