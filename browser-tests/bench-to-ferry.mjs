// Chromium → `ferry serve`'s own peer: one page on ferry's origin makes an offer through
// POST /v1/rtc/offer and sends MIB mebibytes (default 256) on `video_upload` in seed 004's framing
// (48 KiB chunks), pausing above 1 MiB buffered; timed from the first chunk to the server's
// `complete` (stored and hashed). FERRY_URL and FERRY_TOKEN name the server.
import { join } from "node:path";

import { LOOPBACK_FLAGS, ROOT, browser } from "./support.mjs";

const MIB = Number(process.env.MIB || 256);
const chrome = await browser(LOOPBACK_FLAGS);
const page = await chrome.newPage();
await page.addInitScript({ path: join(ROOT, "browser-tests", "in-page.js") });
await page.goto(`${process.env.FERRY_URL}/`);
const result = await page.evaluate(async ({ mib, token }) => {
  const s = await navigator.mediaDevices.getUserMedia({ audio: true });
  s.getTracks().forEach((t) => t.stop());
  const pc = new RTCPeerConnection({ iceServers: [] });
  const ch = pc.createDataChannel("video_upload");
  ch.binaryType = "arraybuffer";
  ch.bufferedAmountLowThreshold = 512 * 1024;
  const answer = new Promise((resolve) => {
    ch.onmessage = (e) => typeof e.data === "string" && resolve(JSON.parse(e.data));
  });
  await pc.setLocalDescription(await pc.createOffer());
  await ferryPeer.gathered(pc);
  const res = await fetch("/v1/rtc/offer", {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }),
  });
  await pc.setRemoteDescription(await res.json());
  await new Promise((r) => (ch.readyState === "open" ? r() : (ch.onopen = r)));
  const total = Math.ceil((mib * 1024 * 1024) / (48 * 1024));
  const zeros = new Uint8Array(48 * 1024);
  const t0 = performance.now();
  await ferryPeer.sendFrames(ch, total, () => zeros);
  const done = await answer;
  const seconds = (performance.now() - t0) / 1000;
  pc.close();
  return { seconds, done };
}, { mib: MIB, token: process.env.FERRY_TOKEN });
if (result.done.type !== "complete") throw new Error(JSON.stringify(result.done));
console.log(`chromium to ferry: ${MIB} MiB in ${result.seconds.toFixed(2)} s = ${((MIB * 1048576) / result.seconds / 1e6).toFixed(1)} MB/s`);
await chrome.close();
