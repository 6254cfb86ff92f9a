// The upload page's rate for one file next to `ferry put` of the same file to the same server.
//
//   cargo build --release && node browser-tests/bench-page.mjs     # SIZE_MIB=1024 ROUNDS=3
//
// One `ferry serve` (release build, embedded store, temp data dir on this disk); each round
// uploads the file through the page in headless Chromium (4 parts in parallel, the page's
// default, and again with 8), then with `ferry put` (8 in parallel, its default); each upload
// replaces the object of the same key. Prints each round and the medians.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

import { ROOT, TOKEN, browser, openPage, randomFile, startServer, tempDir, until } from "./support.mjs";

const SIZE_MIB = Number(process.env.SIZE_MIB || 1024);
const ROUNDS = Number(process.env.ROUNDS || 3);
const FERRY = join(ROOT, "target", "release", "ferry");

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function viaPage(chrome, server, file, lanes) {
  const ctx = await chrome.newContext();
  const page = await openPage(ctx, server);
  await page.fill("#concurrency", String(lanes));
  const t0 = performance.now();
  await page.setInputFiles("#files", file.path);
  await until(async () => (await page.$$("#done-list tr")).length === 1, 600_000, "the page upload");
  const seconds = (performance.now() - t0) / 1000;
  const sha = await page.$eval("#done-list tr", (r) => r.dataset.sha256);
  await ctx.close();
  if (sha !== file.sha256) throw new Error("the page stored other bytes");
  return seconds;
}

function viaPut(server, file, state) {
  const t0 = performance.now();
  execFileSync(FERRY, ["put", file.path, "--key", "bench-put.bin", "--server", server.url, "--token", TOKEN, "--no-progress"], {
    env: { ...process.env, FERRY_STATE_DIR: state },
    stdio: ["ignore", "ignore", "inherit"],
  });
  return (performance.now() - t0) / 1000;
}

// The tests start the debug build; measure the release one.
process.env.FERRY_BIN = FERRY;
const srv = await startServer();
const chrome = await browser();
const dir = tempDir();
const file = await randomFile(dir, "bench.bin", SIZE_MIB * 1024 * 1024);
const rates = { page4: [], page8: [], put: [] };
for (let round = 1; round <= ROUNDS; round++) {
  const row = [];
  for (const [name, run] of [
    ["page4", () => viaPage(chrome, srv, file, 4)],
    ["page8", () => viaPage(chrome, srv, file, 8)],
    ["put", () => viaPut(srv, file, join(dir, `state-${round}`))],
  ]) {
    const seconds = await run();
    rates[name].push(SIZE_MIB / seconds);
    row.push(`${name} ${(SIZE_MIB / seconds).toFixed(1)} MiB/s (${seconds.toFixed(2)} s)`);
  }
  console.log(`round ${round}: ${row.join("   ")}`);
}
const m = Object.fromEntries(Object.entries(rates).map(([k, v]) => [k, median(v)]));
console.log(
  `median: page (4 parts) ${m.page4.toFixed(1)} MiB/s, page (8 parts) ${m.page8.toFixed(1)} MiB/s, ` +
    `ferry put ${m.put.toFixed(1)} MiB/s; page/put = ${(m.page4 / m.put).toFixed(2)} (4), ${(m.page8 / m.put).toFixed(2)} (8)`,
);
await chrome.close();
await srv.stop();
