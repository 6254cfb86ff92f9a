#!/usr/bin/env python3
"""Benchmarks of `ferry put` / `ferry get` on loopback, each next to a baseline from the same run.

    python3 bench/client.py            # ROUNDS=3, 1 GiB and 4 GiB files

- put of a 1 GiB file next to `dd conv=fsync` of the same file on the same disk (target >= 0.7x);
- peak RSS of `ferry put` at the defaults (8 x 8 MiB) for 1 GiB and 4 GiB (target <= 64 + 48 MiB);
- bytes re-sent after `kill -9` of `ferry put` at 60 % (server's ferry_bytes_received_total);
- `ferry get` of the 1 GiB object next to `cat` of the stored file (into the page cache, and with an
  fsync, since `ferry get` makes its file durable and verifies it before renaming it into place).
"""
import json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERRY = os.path.join(ROOT, "target", "release", "ferry")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
GIB = 1 << 30


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def timed(args, env=None):
    """Runs a command under /usr/bin/time; returns (seconds, peak RSS in MiB, stdout)."""
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *args], env=env, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"{args[0]} failed: {p.stderr}")
    rss_kib = int(p.stderr.strip().splitlines()[-1])
    return dt, rss_kib / 1024, p.stdout


def metric(url, name):
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def main():
    sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    work = tempfile.mkdtemp(prefix="ferry-bench-", dir=os.environ.get("TMPDIR", "/tmp"))
    srv = subprocess.Popen([FERRY, "serve", "--listen", "127.0.0.1:0", "--data-dir", f"{work}/data", "--token", "b"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = re.search(r"http://\S+", srv.stdout.readline()).group(0)
        env = dict(os.environ, FERRY_SERVER=url, FERRY_TOKEN="b", FERRY_STATE_DIR=f"{work}/state")
        files = {}
        for name, size in [("1g.bin", GIB), ("4g.bin", 4 * GIB)]:
            path = f"{work}/{name}"
            sh("dd", "if=/dev/urandom", f"of={path}", "bs=8M", f"count={size >> 23}", "status=none")
            files[name] = path
        mib = GIB / (1 << 20)

        print(f"## ferry put vs dd conv=fsync, 1 GiB, {ROUNDS} rounds")
        rows = []
        for r in range(ROUNDS):
            dt, rss, _ = timed([FERRY, "put", files["1g.bin"], "--key", f"r{r}/1g.bin", "--no-progress"], env)
            t0 = time.monotonic()
            sh("dd", f"if={files['1g.bin']}", f"of={work}/dd.out", "bs=8M", "conv=fsync", "status=none")
            dd = time.monotonic() - t0
            os.remove(f"{work}/dd.out")
            rows.append((mib / dt, mib / dd, rss))
            print(f"round {r + 1}: put {mib / dt:7.1f} MiB/s  dd {mib / dd:7.1f} MiB/s  ratio {dd / dt:.2f}  put peak RSS {rss:.1f} MiB")
        put_med = statistics.median(x[0] for x in rows)
        dd_med = statistics.median(x[1] for x in rows)
        ratios = sorted(x[0] / x[1] for x in rows)
        print(f"median: put {put_med:.1f} MiB/s, dd {dd_med:.1f} MiB/s, median ratio {statistics.median(ratios):.2f}")

        print("\n## peak RSS of ferry put at the defaults (concurrency 8, 8 MiB parts)")
        for name in ["1g.bin", "4g.bin"]:
            dt, rss, _ = timed([FERRY, "put", files[name], "--key", f"rss/{name}", "--no-progress"], env)
            size_mib = os.path.getsize(files[name]) / (1 << 20)
            print(f"{name}: peak RSS {rss:.1f} MiB (bound 8 x 8 MiB + 48 MiB = 112 MiB), {size_mib / dt:.1f} MiB/s")

        print("\n## kill -9 of ferry put at 60 %, then the same command again (1 GiB)")
        before = metric(url, "ferry_bytes_received_total")
        args = [FERRY, "put", files["1g.bin"], "--key", "killed/1g.bin", "--json"]
        p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        at = 0.0
        for line in p.stdout:
            e = json.loads(line)
            if e["type"] == "progress" and e["bytes"] >= 0.6 * e["size"]:
                at = e["bytes"] / e["size"]
                p.send_signal(signal.SIGKILL)
                break
        p.wait()
        out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
        result = [json.loads(l) for l in out.splitlines() if '"type":"result"' in l][0]
        received = metric(url, "ferry_bytes_received_total") - before
        resent = received - GIB
        print(f"killed at {at * 100:.0f} %; second run resumed {result['resumed_parts']} of {result['parts']} parts; "
              f"server read {received / (1 << 20):.1f} MiB in all for a 1024 MiB file: "
              f"{resent / (1 << 20):.1f} MiB re-sent (bound: 8 parts in flight = 64 MiB)")

        print(f"\n## ferry get vs cat of the stored file, 1 GiB, {ROUNDS} rounds")
        stored = None
        for root, _, names in os.walk(f"{work}/data/objects"):
            for n in names:
                p = os.path.join(root, n)
                if os.path.getsize(p) >= GIB and (stored is None or os.path.getmtime(p) > os.path.getmtime(stored)):
                    stored = p
        rows = []
        for r in range(ROUNDS):
            out_file = f"{work}/got.bin"
            dt, rss, _ = timed([FERRY, "get", "r0/1g.bin", out_file, "--no-progress"], env)
            os.remove(out_file)
            cats = []
            for durable in (False, True):
                t0 = time.monotonic()
                with open(stored, "rb") as src, open(f"{work}/cat.out", "wb") as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
                    if durable:
                        dst.flush()
                        os.fsync(dst.fileno())
                cats.append(mib / (time.monotonic() - t0))
                os.remove(f"{work}/cat.out")
            rows.append((mib / dt, cats[0], cats[1]))
            print(f"round {r + 1}: get {mib / dt:7.1f} MiB/s  cat {cats[0]:7.1f} MiB/s  cat+fsync {cats[1]:7.1f} MiB/s  "
                  f"ratios {mib / dt / cats[0]:.2f} / {mib / dt / cats[1]:.2f}  get peak RSS {rss:.1f} MiB")
        print(f"median: get {statistics.median(x[0] for x in rows):.1f} MiB/s, cat {statistics.median(x[1] for x in rows):.1f} MiB/s, "
              f"cat+fsync {statistics.median(x[2] for x in rows):.1f} MiB/s; median ratios "
              f"{statistics.median(x[0] / x[1] for x in rows):.2f} (cat) / {statistics.median(x[0] / x[2] for x in rows):.2f} (cat+fsync)")
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
