// Chromium ↔ Chromium data-channel throughput: two RTCPeerConnections in one headless page on
// loopback, seed 004's framing (48 KiB chunks), the sender pausing above 1 MiB buffered.
// Prints MB/s for MIB mebibytes (default 256).
import { createServer } from "node:http";

import { join } from "node:path";

import { LOOPBACK_FLAGS, ROOT, browser } from "./support.mjs";

const MIB = Number(process.env.MIB || 256);
const chrome = await browser(LOOPBACK_FLAGS);
// A loopback origin is a secure context, where getUserMedia (which unlocks host candidates) exists.
const http = createServer((_, res) => res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html>"));
await new Promise((r) => http.listen(0, "127.0.0.1", r));
const page = await chrome.newPage();
await page.addInitScript({ path: join(ROOT, "browser-tests", "in-page.js") });
await page.goto(`http://127.0.0.1:${http.address().port}/`);
const seconds = await page.evaluate(async (mib) => {
  const s = await navigator.mediaDevices.getUserMedia({ audio: true });
  s.getTracks().forEach((t) => t.stop());
  const a = new RTCPeerConnection({ iceServers: [] });
  const b = new RTCPeerConnection({ iceServers: [] });
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
  const ch = a.createDataChannel("video_upload");
  ch.bufferedAmountLowThreshold = 512 * 1024;
  const total = Math.ceil((mib * 1024 * 1024) / (48 * 1024));
  const done = new Promise((resolve) => {
    b.ondatachannel = ({ channel }) => {
      channel.binaryType = "arraybuffer";
      let got = 0;
      channel.onmessage = (e) => { if (++got === total) resolve(); };
    };
  });
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  await new Promise((r) => (ch.readyState === "open" ? r() : (ch.onopen = r)));
  const zeros = new Uint8Array(48 * 1024);
  const t0 = performance.now();
  await ferryPeer.sendFrames(ch, total, () => zeros);
  await done;
  return (performance.now() - t0) / 1000;
}, MIB);
console.log(`chromium: ${MIB} MiB in ${seconds.toFixed(2)} s = ${((MIB * 1048576) / seconds / 1e6).toFixed(1)} MB/s`);
await chrome.close();
http.close();
