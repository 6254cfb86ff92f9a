#!/usr/bin/env python3
"""Two aiortc peers upload to `ferry serve --rtc-udp-port 0` at the same time, exactly as seed
004's SDK does (see aiortc_sends_to_ferry.py). Both answers must offer the same one UDP port,
the server process must hold one UDP socket for its peers while both are connected (counted in
/proc), and both files must be stored whole. A second server given `--rtc-public-ip` must offer
that address, and not the one it binds. Everything stays on 127.0.0.1.

    FERRY_BIN=target/debug/ferry python3 interop/aiortc_one_udp_port.py
"""
import asyncio
import hashlib
import os
import re
import sys
import tempfile

from aiortc import RTCConfiguration, RTCPeerConnection

import aiortc_sends_to_ferry as seed004

PUBLIC_IP = "198.51.100.7"  # TEST-NET-2: never routed, only offered


def host_candidates(sdp):
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", sdp)]


def udp_ports_of(pid):
    """The local ports of the UDP sockets process `pid` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].split(":")[1], 16))
    return ports


async def two_at_once(url, pid, files):
    answers, both = [], asyncio.Event()
    seen = {}

    async def on_answer(sdp):
        answers.append(host_candidates(sdp))
        if len(answers) == 2:
            seen["ports"] = udp_ports_of(pid)
            both.set()
        await asyncio.wait_for(both.wait(), 30)

    results = await asyncio.gather(*(seed004.upload(url, data, on_answer) for data in files))
    return answers, seen["ports"], results


async def offered_by(url):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("video_upload")
    await pc.setLocalDescription(await pc.createOffer())
    answer = __import__("json").loads(seed004.api(url, "/rtc/offer", {"type": "offer", "sdp": pc.localDescription.sdp}))
    await pc.close()
    return answer["sdp"]


def main():
    files = [os.urandom(2 * 1024 * 1024 + 7), os.urandom(3 * 1024 * 1024 + 11)]
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        proc, url = seed004.start_server(one, "--rtc-udp-port", "0")
        try:
            answers, ports, results = asyncio.run(two_at_once(url, proc.pid, files))
            assert len(answers[0]) == 1 and answers[0] == answers[1], f"one candidate, the same for both: {answers}"
            port = answers[0][0][1]
            assert ports == [port], f"the server holds one UDP socket, on the offered port {port}: {ports}"
            for (result, echoes), data in zip(results, files):
                assert result["type"] == "complete", result
                assert result["sha256"] == hashlib.sha256(data).hexdigest(), result
                assert echoes == [b"", b"\x00", b"\xff"] * 3, echoes
        finally:
            proc.kill()
            proc.wait()
        proc, url = seed004.start_server(two, "--rtc-udp-port", "0", "--rtc-public-ip", PUBLIC_IP)
        try:
            offered = host_candidates(asyncio.run(offered_by(url)))
            assert [ip for ip, _ in offered] == [PUBLIC_IP], f"the public IP is offered, and only it: {offered}"
        finally:
            proc.kill()
            proc.wait()
    print(f"ok - two aiortc peers at once on one UDP port ({port}); --rtc-public-ip offered as {PUBLIC_IP}")


if __name__ == "__main__":
    sys.exit(main())
