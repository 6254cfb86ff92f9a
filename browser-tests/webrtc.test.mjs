// Chromium and ferry over WebRTC data channels, on loopback: a page sends a file to `ferry serve`
// (POST /v1/rtc/offer) in seed 004's framing; a page on another origin names a processor and
// hears its results while it uploads; and a page receives a file from `ferry send` through the
// signaling room, speaking the control-channel protocol.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { LOOPBACK_FLAGS, ROOT, TOKEN, browser, startServer, tempDir } from "./support.mjs";


let chrome;
before(async () => {
  chrome = await browser(LOOPBACK_FLAGS);
});
after(async () => {
  await chrome?.close();
});

const IN_PAGE = join(ROOT, "browser-tests", "in-page.js");

/** A page on ferry's own origin, with the media permission that unlocks host candidates. */
async function ferryPage(server) {
  const page = await chrome.newPage();
  await page.addInitScript({ path: IN_PAGE });
  await page.goto(server.url + "/");
  await page.evaluate(async () => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    stream.getTracks().forEach((t) => t.stop());
  });
  return page;
}

test("a Chromium page uploads to ferry serve in seed 004's framing; empty, 1-byte and 0xff keepalives are echoed before, during and after", async () => {
  const server = await startServer();
  try {
    const page = await ferryPage(server);
    const bytes = randomBytes(2 * 1024 * 1024 + 333);
    const result = await page.evaluate(async ({ token, b64 }) => {
      const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const pc = new RTCPeerConnection({ iceServers: [] });
      const ch = pc.createDataChannel("video_upload");
      ch.binaryType = "arraybuffer";
      ch.bufferedAmountLowThreshold = 512 * 1024;
      const echoes = [];
      let answered;
      const answer = new Promise((resolve) => (answered = resolve));
      let echoed = () => {};
      ch.onmessage = (e) => {
        if (typeof e.data === "string") answered(JSON.parse(e.data));
        else { echoes.push(Array.from(new Uint8Array(e.data))); echoed(); }
      };
      const until = (what, check) => new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${what} within 30 s; echoes so far: ${JSON.stringify(echoes)}`)), 30000);
        echoed = () => { if (check()) { clearTimeout(timer); resolve(); } };
        echoed();
      });
      // An empty ArrayBuffer, one zero byte, one 0xff byte: all keepalives, echoed unchanged.
      const keepalives = () => [new ArrayBuffer(0), new Uint8Array([0]), new Uint8Array([0xff])].forEach((k) => ch.send(k));
      await pc.setLocalDescription(await pc.createOffer());
      await ferryPeer.gathered(pc);
      const res = await fetch("/v1/rtc/offer", {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ type: pc.localDescription.type, sdp: pc.localDescription.sdp }),
      });
      await pc.setRemoteDescription(await res.json());
      await new Promise((r) => (ch.readyState === "open" ? r() : (ch.onopen = r)));
      const CHUNK = 48 * 1024;
      const total = Math.ceil(data.length / CHUNK);
      keepalives();
      await ferryPeer.sendFrames(ch, total, (i) => data.subarray(i * CHUNK, (i + 1) * CHUNK), async (i) => {
        if (i === Math.floor(total / 2)) keepalives();
      });
      const stored = await Promise.race([answer, new Promise((r) => setTimeout(() => r({ timedOut: true, echoes }), 30000))]);
      await until("echoes of the keepalives sent before and during", () => echoes.length >= 6);
      keepalives();
      await until("echoes of the keepalives sent after", () => echoes.length >= 9);
      pc.close();
      return { stored, echoes };
    }, { token: TOKEN, b64: bytes.toString("base64") });
    assert.equal(result.stored.type, "complete", JSON.stringify(result.stored));
    assert.equal(result.stored.sha256, createHash("sha256").update(bytes).digest("hex"));
    const once = [[], [0], [255]];
    assert.deepEqual(result.echoes, [...once, ...once, ...once], "every keepalive is echoed, unchanged and in order");
    const stored = await fetch(`${server.url}/v1/objects/${result.stored.key}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.deepEqual(Buffer.from(await stored.arrayBuffer()), bytes);
  } finally {
    await server.stop();
  }
});

/** A blank page on an origin of its own on loopback, so every call to ferry is cross-origin. */
async function otherOrigin() {
  const http = createServer((req, res) => res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html>"));
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${http.address().port}`, close: () => http.close() };
}

test("a Chromium page on another origin names a processor in its offer (CORS) and hears each part's result while it uploads", async () => {
  const app = await otherOrigin();
  const server = await startServer(["--cors-origin", app.origin, "--part-processor", "count=wc -c"]);
  try {
    const page = await chrome.newPage();
    await page.addInitScript({ path: IN_PAGE });
    await page.goto(`${app.origin}/`);
    const result = await page.evaluate(async ({ token, ferry }) => {
      await navigator.mediaDevices.getUserMedia({ audio: true }).then((s) => s.getTracks().forEach((t) => t.stop()));
      const size = 24 * 1024 * 1024 + 4321;
      const data = new Uint8Array(size);
      for (let i = 0; i < size; i += 65536) crypto.getRandomValues(data.subarray(i, Math.min(size, i + 65536)));
      const sha256 = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", data)), (b) => b.toString(16).padStart(2, "0")).join("");
      const pc = new RTCPeerConnection({ iceServers: [] });
      const inference = pc.createDataChannel("inference");
      const ch = pc.createDataChannel("video_upload");
      ch.binaryType = "arraybuffer";
      ch.bufferedAmountLowThreshold = 512 * 1024;
      const texts = (channel) => {
        const seen = [];
        let wake = () => {};
        channel.onmessage = (e) => { if (typeof e.data === "string") { seen.push(JSON.parse(e.data)); wake(); } };
        return {
          seen,
          until: (what, check) => new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`no ${what} within 60 s: ${JSON.stringify(seen)}`)), 60000);
            wake = () => { const found = seen.find(check); if (found) { clearTimeout(timer); resolve(found); } };
            wake();
          }),
        };
      };
      const results = texts(inference);
      const answers = texts(ch);
      await pc.setLocalDescription(await pc.createOffer());
      await ferryPeer.gathered(pc);
      const res = await fetch(`${ferry}/v1/rtc/offer?processor=count&name=clips/chromium.bin`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ type: pc.localDescription.type, sdp: pc.localDescription.sdp }),
      });
      if (!res.ok) return { refused: res.status, body: await res.text() };
      await pc.setRemoteDescription(await res.json());
      await new Promise((r) => (ch.readyState === "open" ? r() : (ch.onopen = r)));
      const CHUNK = 48 * 1024;
      const total = Math.ceil(size / CHUNK);
      let heardAt = null;
      await ferryPeer.sendFrames(ch, total, (i) => data.subarray(i * CHUNK, (i + 1) * CHUNK), async (i) => {
        // Past the first part (8 MiB): hear its result before sending the rest.
        if (i * CHUNK >= 9 * 1024 * 1024 && heardAt === null) {
          await results.until("the first part's result", (m) => m.type === "part_processed");
          heardAt = i;
        }
      });
      const stored = await answers.until("complete", (m) => m.type === "complete" || m.type === "error");
      await results.until("the final result", (m) => m.type === "final_result");
      pc.close();
      return { stored, results: results.seen, heardAt, total, size, sha256 };
    }, { token: TOKEN, ferry: server.url });
    assert.equal(result.stored?.type, "complete", JSON.stringify(result));
    assert.equal(result.stored.key, "clips/chromium.bin");
    assert.equal(result.stored.sha256, result.sha256);
    assert.ok(result.heardAt < result.total, "a part's result came while the upload ran");
    const counts = result.results.filter((m) => m.type === "part_processed").map((m) => Number(m.result.trim()));
    assert.equal(counts.reduce((a, b) => a + b, 0), result.size, `every byte went to the processor once: ${counts}`);
    assert.equal(result.results.at(-1).type, "final_result");
    assert.equal(result.results.at(-1).status, "completed");
    const stored = await fetch(`${server.url}/v1/objects/clips/chromium.bin`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(createHash("sha256").update(Buffer.from(await stored.arrayBuffer())).digest("hex"), result.sha256);
  } finally {
    app.close();
    await server.stop();
  }
});

test("a Chromium page receives a file from ferry send through the signaling room", async () => {
  const server = await startServer();
  const dir = tempDir();
  try {
    const page = await ferryPage(server);
    const bytes = randomBytes(1024 * 1024 + 77);
    const file = join(dir, "from-ferry.bin");
    writeFileSync(file, bytes);
    // The page joins the room and waits for an offer.
    await page.evaluate(({ token, url }) => {
      window.received = new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        let pc;
        const channels = {};
        ws.onopen = () => ws.send(JSON.stringify({ type: "join", room: "chrome", role: "peer", peer_id: "browser", token }));
        ws.onerror = () => reject(new Error("signaling failed"));
        ws.onmessage = async (e) => {
          const m = JSON.parse(e.data);
          if (m.type === "joined") window.joined = true;
          if (m.type !== "signal" || m.data.type !== "offer") return;
          pc = new RTCPeerConnection({ iceServers: [] });
          pc.ondatachannel = ({ channel }) => {
            channel.binaryType = "arraybuffer";
            channels[channel.label] = channel;
            if (channel.label === "control") {
              let start;
              const chunks = [];
              let count = 0;
              channel.onmessage = (ev) => {
                const c = JSON.parse(ev.data);
                if (c.type !== "upload_start") return;
                start = c;
                channel.send(JSON.stringify({ type: "resume_state", transfer_id: c.transfer_id, ranges: [] }));
                channels.upload.onmessage = async (fe) => {
                  const buf = new Uint8Array(fe.data);
                  if (buf.length <= 1) { channels.upload.send(buf); return; }
                  const view = new DataView(buf.buffer);
                  const index = view.getUint32(0, true);
                  if (!chunks[index]) { chunks[index] = buf.slice(8); count++; }
                  if (count < start.total_chunks) return;
                  const whole = new Uint8Array(start.size);
                  chunks.forEach((ch, i) => whole.set(ch, i * start.chunk_size));
                  const digest = await crypto.subtle.digest("SHA-256", whole);
                  const sha256 = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
                  channel.send(JSON.stringify({ type: "complete", transfer_id: start.transfer_id, key: start.name, size: whole.length, sha256 }));
                  resolve({ name: start.name, size: whole.length, sha256, announced: start.sha256 });
                };
              };
            }
          };
          await pc.setRemoteDescription(m.data);
          await pc.setLocalDescription(await pc.createAnswer());
          await new Promise((r) => {
            if (pc.iceGatheringState === "complete") r();
            pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
          });
          ws.send(JSON.stringify({ type: "signal", to: m.from, data: { type: "answer", sdp: pc.localDescription.sdp } }));
        };
      });
    }, { token: TOKEN, url: server.url.replace("http://", "ws://") + "/v1/signal" });
    await page.waitForFunction(() => window.joined === true);
    const exe = join(ROOT, "target", "debug", "ferry");
    const sender = spawn(exe, ["send", file, "--room", "chrome", "--to", "browser", "--json", "--server", server.url, "--token", TOKEN], {
      env: { ...process.env, FERRY_LOG: "warn" },
    });
    let out = "";
    sender.stdout.on("data", (d) => (out += d));
    let err = "";
    sender.stderr.on("data", (d) => (err += d));
    const code = await new Promise((r) => sender.on("exit", r));
    assert.equal(code, 0, err);
    const received = await page.evaluate(() => window.received);
    const sha = createHash("sha256").update(bytes).digest("hex");
    assert.equal(received.sha256, sha);
    assert.equal(received.announced, sha, "the sender announced the SHA-256");
    const result = out.trim().split("\n").map((l) => JSON.parse(l)).find((v) => v.type === "result");
    assert.equal(result.sha256, sha);
    assert.equal(result.stored_as, "from-ferry.bin");
  } finally {
    await server.stop();
  }
});
