#!/usr/bin/env python3
"""Seed 004's whole loop with an unmodified aiortc peer and `ferry serve`'s own peer, on
127.0.0.1: the peer names a processor and the object's name in its offer
(`POST /v1/rtc/offer?processor=…&name=…`), opens seed 004's `inference` channel beside
`video_upload`, and uploads 64 MiB in 48 KiB frames; each part's `part_processed` comes back on
`inference` while it uploads (the peer waits for the first before sending past part 2), then
`final_result`; `complete` comes on the upload channel, and the object has the file's bytes.

Then a peer is killed (SIGKILL, in a process of its own) halfway through another upload; a new
peer makes the offer again with the first answer's `resume` token, hears `resume_state` (the
chunks the server holds) first, sends only the rest, and the object is whole.

    FERRY_BIN=target/debug/ferry python3 interop/aiortc_seed004_loop.py
"""
import asyncio
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.request

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

import aiortc_sends_to_ferry as seed004

CHUNK = seed004.CHUNK
MIB = 1024 * 1024


async def connect(url, query, labels):
    """A peer with `labels` channels (texts of each queued), connected through the offer route."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channels, texts, opened = {}, {}, []
    for label in labels:
        ch = pc.createDataChannel(label)
        ch.bufferedAmountLowThreshold = seed004.HIGH_WATER // 2
        q, ev = asyncio.Queue(), asyncio.Event()
        ch.on("open", ev.set)
        ch.on("message", lambda m, q=q: isinstance(m, str) and q.put_nowait(json.loads(m)))
        channels[label], texts[label] = ch, q
        opened.append(ev)
    await pc.setLocalDescription(await pc.createOffer())
    answer = json.loads(seed004.api(url, "/rtc/offer" + query, {"type": "offer", "sdp": pc.localDescription.sdp}))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    for ev in opened:
        await asyncio.wait_for(ev.wait(), 30)
    return pc, channels, texts, answer["resume"]


async def send_frames(channel, data, indices, total):
    drained = asyncio.Event()
    channel.on("bufferedamountlow", drained.set)
    for i in indices:
        while channel.bufferedAmount > seed004.HIGH_WATER:
            drained.clear()
            await asyncio.wait_for(drained.wait(), 30)
        channel.send(struct.pack("<II", i, total) + data[i * CHUNK:(i + 1) * CHUNK])


async def until(queue, kind):
    seen = []
    while not seen or seen[-1]["type"] != kind:
        seen.append(await asyncio.wait_for(queue.get(), 120))
        if seen[-1]["type"] == "error":
            raise AssertionError(f"the server refused: {seen[-1]}")
    return seen


async def the_loop(url, data):
    pc, ch, texts, _ = await connect(url, "?processor=count&name=clips/seed004.mp4", ["inference", "video_upload"])
    total = (len(data) + CHUNK - 1) // CHUNK
    past_part_2 = (17 * MIB) // CHUNK
    await send_frames(ch["video_upload"], data, range(past_part_2), total)
    first = await until(texts["inference"], "part_processed")
    await send_frames(ch["video_upload"], data, range(past_part_2, total), total)
    done = (await until(texts["video_upload"], "complete"))[-1]
    results = first + await until(texts["inference"], "final_result")
    await pc.close()
    return done, results


def child(url, path, token_file):
    """Uploads `path` slowly, writing the resume token, then `half` once half is sent; waits."""
    async def run():
        data = open(path, "rb").read()
        pc, ch, _, token = await connect(url, "?name=clips/killed.bin", ["video_upload"])
        total = (len(data) + CHUNK - 1) // CHUNK
        await send_frames(ch["video_upload"], data, range(total // 2), total)
        while ch["video_upload"].bufferedAmount > 0:
            await asyncio.sleep(0.01)
        with open(token_file, "w") as f:
            f.write(token)
        await asyncio.sleep(3600)
    asyncio.run(run())


async def come_back(url, data, token):
    pc, ch, texts, again = await connect(url, f"?resume={token}", ["video_upload"])
    assert again == token, (again, token)
    state = await asyncio.wait_for(texts["video_upload"].get(), 30)
    assert state["type"] == "resume_state" and state["transfer_id"] == token, state
    held = {i for start, end in state["ranges"] for i in range(start, end)}
    total = (len(data) + CHUNK - 1) // CHUNK
    rest = [i for i in range(total) if i not in held]
    await send_frames(ch["video_upload"], data, rest, total)
    done = (await until(texts["video_upload"], "complete"))[-1]
    await pc.close()
    return done, len(held), total


def stored(url, key):
    req = urllib.request.Request(url + "/v1/objects/" + key, headers={"Authorization": "Bearer " + seed004.TOKEN})
    with urllib.request.urlopen(req, timeout=60) as res:
        return res.read()


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        return child(*sys.argv[2:])
    with tempfile.TemporaryDirectory() as work:
        proc, url = seed004.start_server(os.path.join(work, "data"), "--part-processor", "count=wc -c")
        try:
            data = os.urandom(64 * MIB + 4321)
            done, results = asyncio.run(the_loop(url, data))
            assert done["key"] == "clips/seed004.mp4", done
            assert done["sha256"] == hashlib.sha256(data).hexdigest(), done
            counts = [int(r["result"]) for r in results if r["type"] == "part_processed"]
            assert sum(counts) == len(data) and len(counts) > 1, f"each part processed once: {counts}"
            assert results[-1]["status"] == "completed", results[-1]
            assert stored(url, "clips/seed004.mp4") == data
            print(f"ok - aiortc: 64 MiB with processor `count`: {len(counts)} part results while uploading, then final_result")

            data = os.urandom(40 * MIB + 77)
            path, token_file = os.path.join(work, "killed.bin"), os.path.join(work, "token")
            with open(path, "wb") as f:
                f.write(data)
            peer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", url, path, token_file])
            try:
                for _ in range(1200):
                    if os.path.exists(token_file) and os.path.getsize(token_file) == 32:
                        break
                    assert peer.poll() is None, "the first peer ended early"
                    asyncio.run(asyncio.sleep(0.05))
                else:
                    raise AssertionError("the first peer did not send half within 60 s")
            finally:
                os.kill(peer.pid, signal.SIGKILL)
                peer.wait()
            token = open(token_file).read()
            done, held, total = asyncio.run(come_back(url, data, token))
            assert done["sha256"] == hashlib.sha256(data).hexdigest(), done
            assert 0 < held < total, f"{held} of {total} chunks held after the kill"
            assert stored(url, "clips/killed.bin") == data
            print(f"ok - aiortc killed at 50 %: the next peer sent {total - held} of {total} chunks")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
