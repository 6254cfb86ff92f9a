#!/usr/bin/env python3
"""An aiortc peer uploads a file to `ferry serve` exactly as seed 004's SDK does: a `video_upload`
data channel, 48 KiB chunks framed `[chunk_index u32 LE][total_chunks u32 LE][payload]`, 1-byte
keepalives, backpressure on `bufferedAmount`, and no control channel. Its keepalives are also an
empty message and a 0xff byte, before, during and after the transfer: each must come back
unchanged, and none may hold up what the server says after it. The offer goes to
`POST /v1/rtc/offer`; the server answers on the upload channel with one JSON text message, and the
object it stored must have the file's SHA-256 and bytes. Everything stays on 127.0.0.1.

    FERRY_BIN=target/debug/ferry python3 interop/aiortc_sends_to_ferry.py
"""
import asyncio
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import urllib.request

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

# aioice leaves 127.0.0.1 out of its host candidates; on a loopback-only test it is the only one.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "interop-token"
CHUNK = 48 * 1024
SIZE = 3 * 1024 * 1024 + 12345
HIGH_WATER = 1024 * 1024


def start_server(data_dir, *extra):
    exe = os.environ.get("FERRY_BIN", os.path.join(ROOT, "target", "debug", "ferry"))
    proc = subprocess.Popen(
        [exe, "serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir", data_dir, *extra],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "FERRY_LOG": "warn"})
    url = re.search(r"http://[0-9.:]+", proc.stdout.readline()).group(0)
    return proc, url


def api(url, path, body=None):
    req = urllib.request.Request(url + "/v1" + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return res.read()


async def upload(url, data, on_answer=None):
    """Uploads `data`; `on_answer(sdp)` is awaited once the server has answered."""
    # An explicitly empty ICE server list: no public STUN server is tried.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("video_upload")
    opened = asyncio.Event()
    drained = asyncio.Event()
    answers = asyncio.Queue()
    echoes = []
    channel.bufferedAmountLowThreshold = HIGH_WATER // 2
    channel.on("open", opened.set)
    channel.on("bufferedamountlow", drained.set)

    @channel.on("message")
    def on_message(message):
        if isinstance(message, str):
            answers.put_nowait(json.loads(message))
        else:
            echoes.append(message)

    await pc.setLocalDescription(await pc.createOffer())
    answer = json.loads(api(url, "/rtc/offer", {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}))
    assert answer["type"] == "answer", answer
    if on_answer:
        await on_answer(answer["sdp"])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await asyncio.wait_for(opened.wait(), 30)

    keepalives = [b"", b"\x00", b"\xff"]
    for k in keepalives:
        channel.send(k)
    total = (len(data) + CHUNK - 1) // CHUNK
    for i in range(total):
        if i == total // 2:
            for k in keepalives:
                channel.send(k)
        while channel.bufferedAmount > HIGH_WATER:
            drained.clear()
            await asyncio.wait_for(drained.wait(), 30)
        channel.send(struct.pack("<II", i, total) + data[i * CHUNK:(i + 1) * CHUNK])
    result = await asyncio.wait_for(answers.get(), 60)
    for k in keepalives:
        channel.send(k)
    for _ in range(300):
        if len(echoes) >= 3 * len(keepalives):
            break
        await asyncio.sleep(0.1)
    await pc.close()
    return result, echoes


def main():
    data = os.urandom(SIZE)
    sha = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, url = start_server(data_dir)
        try:
            result, echoes = asyncio.run(upload(url, data))
            assert result["type"] == "complete", result
            assert result["sha256"] == sha, result
            assert result["size"] == SIZE, result
            assert echoes == [b"", b"\x00", b"\xff"] * 3, f"every keepalive is echoed, unchanged: {echoes}"
            key = result["key"]
            req = urllib.request.Request(url + "/v1/objects/" + key, headers={"Authorization": "Bearer " + TOKEN})
            with urllib.request.urlopen(req, timeout=30) as res:
                stored = res.read()
            assert stored == data, "the stored object is the file"
            print(f"ok - aiortc {__import__('aiortc').__version__} sent {SIZE} bytes in seed-004 frames; stored as {key}")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
