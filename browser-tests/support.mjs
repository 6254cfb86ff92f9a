// Shared by the browser tests: a real `ferry serve` on 127.0.0.1, headless Debian Chromium, files
// with known SHA-256s.
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const TOKEN = "browser-test-token";
/** Chromium flags without which headless Chromium on a loopback-only network gathers no candidate. */
export const LOOPBACK_FLAGS = [
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
];
export const ARTIFACTS = join(ROOT, "target", "browser-artifacts");

/** Starts `ferry serve` with a temp data dir; resolves once it listens. */
export async function startServer(extra = []) {
  const dataDir = mkdtempSync(join(tmpdir(), "ferry-browser-"));
  const exe = process.env.FERRY_BIN || join(ROOT, "target", "debug", "ferry");
  const proc = spawn(exe, ["serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir", dataDir, ...extra], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, FERRY_LOG: "warn" },
  });
  const lines = createInterface({ input: proc.stdout });
  const first = await new Promise((resolve, reject) => {
    lines.once("line", resolve);
    proc.once("exit", (code) => reject(new Error(`ferry serve exited with ${code}`)));
  });
  const url = first.match(/http:\/\/[0-9.:]+/)[0];
  return {
    url,
    dataDir,
    async stop() {
      proc.kill("SIGKILL");
      await new Promise((r) => proc.once("exit", r));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Calls the server's API with the token. */
export async function api(server, path, { method = "GET", body } = {}) {
  const res = await fetch(`${server.url}/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** Writes `size` random bytes to a new file; returns its path and SHA-256. */
export async function randomFile(dir, name, size) {
  const path = join(dir, name);
  const hash = createHash("sha256");
  const out = createWriteStream(path);
  const chunk = 4 << 20;
  for (let left = size; left > 0; left -= chunk) {
    const buf = randomBytes(Math.min(chunk, left));
    hash.update(buf);
    if (!out.write(buf)) await new Promise((r) => out.once("drain", r));
  }
  await new Promise((r, j) => out.end((e) => (e ? j(e) : r())));
  return { path, sha256: hash.digest("hex"), size };
}

export function tempDir() {
  return mkdtempSync(join(tmpdir(), "ferry-files-"));
}

/** Headless Debian Chromium, kept off every network but loopback. */
export async function browser(extra = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      ...extra,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Opens the upload page of `server` and enters the token. */
export async function openPage(ctx, server) {
  const page = await ctx.newPage();
  await page.goto(server.url + "/");
  await page.fill("#token", TOKEN);
  await page.click("#token-form button");
  await page.waitForSelector("#upload-panel:not([hidden])");
  return page;
}

/** Polls `check` until it returns something truthy, or fails after `ms`. */
export async function until(check, ms = 60_000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function artifactPath(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}
