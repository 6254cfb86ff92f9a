// ferry's own upload page in headless Chromium against a real `ferry serve`.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { api, artifactPath, browser, openPage, randomFile, startServer, tempDir, until } from "./support.mjs";

const MIB = 1024 * 1024;
let chrome;
let dir;

before(async () => {
  chrome = await browser();
  dir = tempDir();
});

after(async () => {
  await chrome?.close();
});

/** Completed rows on the page, by key. */
async function completedRows(page) {
  return page.$$eval("#done-list tr", (rows) => rows.map((r) => ({ key: r.dataset.key, sha256: r.dataset.sha256 })));
}

/** Slows every signed part PUT down, so a test can act mid-upload. */
async function throttleParts(page, ms) {
  await page.route("**/p/**", async (route) => {
    await new Promise((r) => setTimeout(r, ms));
    await route.continue();
  });
}

test("three files upload in parallel parts, with progress, and are stored with their SHA-256", async () => {
  const server = await startServer();
  const ctx = await chrome.newContext({ viewport: { width: 1100, height: 760 } });
  try {
    const page = await openPage(ctx, server);
    const files = [
      await randomFile(dir, "small.bin", 300 * 1024),
      await randomFile(dir, "medium.bin", 20 * MIB + 5),
      await randomFile(dir, "large.bin", 210 * MIB),
    ];
    await page.check("#verify");
    let maxInFlight = 0;
    let inFlight = 0;
    page.on("request", (r) => { if (r.method() === "PUT") maxInFlight = Math.max(maxInFlight, ++inFlight); });
    page.on("response", (r) => { if (r.request().method() === "PUT") inFlight--; });
    page.on("requestfailed", (r) => { if (r.method() === "PUT") inFlight--; });
    await page.setInputFiles("#files", files.map((f) => f.path));

    // Mid-upload: the large file is on its way; keep a picture of the page.
    await until(async () => {
      const v = await page.$eval("#queue li:nth-child(3) progress", (p) => p.value).catch(() => 0);
      return v > 0.2 && v < 0.9;
    }, 120_000, "the large file to be under way");
    const meta = await page.$eval("#queue li:nth-child(3) .meta", (e) => e.textContent);
    assert.match(meta, /MiB\/s · ETA/, `rate and ETA are shown: ${meta}`);
    await page.screenshot({ path: artifactPath("upload-page-mid-upload.png"), fullPage: true });

    await until(async () => (await completedRows(page)).length === 3, 300_000, "three completed uploads");
    const rows = await completedRows(page);
    for (const f of files) {
      const name = f.path.split("/").pop();
      const row = rows.find((r) => r.key === name);
      assert.ok(row, `${name} is listed as completed`);
      assert.equal(row.sha256, f.sha256, `${name}: the page shows the stored SHA-256`);
      const listed = (await api(server, "/uploads?state=completed")).body.uploads.find((u) => u.key === name);
      const st = (await api(server, `/uploads/${listed.upload_id}`)).body;
      assert.equal(st.result.sha256, f.sha256, `${name}: the server stored the file's SHA-256`);
      assert.equal(st.result.size, f.size);
    }
    assert.ok(maxInFlight >= 2 && maxInFlight <= 4, `parts went in parallel, at most 4 at once (${maxInFlight})`);
    await page.screenshot({ path: artifactPath("upload-page-done.png"), fullPage: true });
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("after a reload, choosing the same file again sends only the missing parts", async () => {
  const server = await startServer();
  const ctx = await chrome.newContext();
  try {
    let page = await openPage(ctx, server);
    await throttleParts(page, 300);
    const file = await randomFile(dir, "resumed.bin", 100 * MIB + 123);
    await page.setInputFiles("#files", file.path);
    const upload = await until(async () => {
      const list = (await api(server, "/uploads?state=uploading")).body.uploads;
      return list.find((u) => u.key === "resumed.bin");
    }, 30_000, "the upload to be created");
    await until(async () => (await api(server, `/uploads/${upload.upload_id}`)).body.parts.length >= 4, 60_000, "4 parts stored");

    await page.reload();
    await page.waitForSelector("#upload-panel:not([hidden])");
    const unfinished = await page.$eval("#unfinished-list", (e) => e.textContent);
    assert.match(unfinished, /resumed\.bin/, "the page lists the unfinished upload");
    // Whatever was cut off by the reload is not stored; what is stored stays.
    await new Promise((r) => setTimeout(r, 500));
    const held = (await api(server, `/uploads/${upload.upload_id}`)).body.parts.map((p) => p.part_number);
    const sent = [];
    page.on("request", (r) => {
      const m = r.method() === "PUT" && r.url().match(/\/p\/[0-9a-f]+\/(\d+)\?/);
      if (m) sent.push(Number(m[1]));
    });
    await page.setInputFiles("#files", file.path);
    await until(async () => (await completedRows(page)).length === 1, 120_000, "the resumed upload to finish");

    const st = (await api(server, `/uploads/${upload.upload_id}`)).body;
    assert.equal(st.state, "completed", "the same upload was carried on, not a new one");
    assert.equal(st.result.sha256, file.sha256);
    const expected = [];
    for (let n = 1; n <= st.part_count; n++) if (!held.includes(n)) expected.push(n);
    assert.deepEqual([...sent].sort((a, b) => a - b), expected, `only the missing parts were sent (held ${held})`);
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("cancel frees the session and its parts", async () => {
  const server = await startServer();
  const ctx = await chrome.newContext();
  try {
    const page = await openPage(ctx, server);
    await throttleParts(page, 300);
    const file = await randomFile(dir, "cancelled.bin", 60 * MIB);
    await page.setInputFiles("#files", file.path);
    const upload = await until(async () => {
      const list = (await api(server, "/uploads?state=uploading")).body.uploads;
      return list.find((u) => u.key === "cancelled.bin");
    }, 30_000, "the upload to be created");
    await until(async () => (await api(server, `/uploads/${upload.upload_id}`)).body.parts.length >= 1, 60_000, "a part stored");
    await page.click("#queue li .cancel");
    await until(async () => (await api(server, `/uploads/${upload.upload_id}`)).body.state === "cancelled", 20_000, "cancelled");
    // The session turns cancelled first, then its parts are deleted (the page's DELETE returns after both).
    await until(async () => !existsSync(join(server.dataDir, "uploads", upload.upload_id)), 10_000, "the parts to be deleted");
    await until(async () => (await page.$eval("#queue li", (e) => e.dataset.state)) === "cancelled", 10_000, "the page to say so");
    const unfinished = await page.evaluate(() => localStorage.getItem("ferry.unfinished"));
    assert.equal(unfinished, "{}", "nothing is left to resume");
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("a part URL that expires on the way is signed again", async () => {
  const server = await startServer(["--url-ttl", "2s"]);
  const ctx = await chrome.newContext();
  try {
    const page = await openPage(ctx, server);
    // Hold the first two part PUTs past their URLs' lifetime.
    let held = 0;
    await page.route("**/p/**", async (route) => {
      if (held++ < 2) await new Promise((r) => setTimeout(r, 3500));
      await route.continue();
    });
    let expired = 0;
    let signs = 0;
    page.on("response", async (r) => {
      if (r.request().method() === "PUT" && r.status() === 403) {
        const body = await r.json().catch(() => ({}));
        if (body.error?.code === "url_expired") expired++;
      }
      if (r.url().endsWith("/parts/sign")) signs++;
    });
    const file = await randomFile(dir, "expiring.bin", 20 * MIB);
    await page.setInputFiles("#files", file.path);
    await until(async () => (await completedRows(page)).length === 1, 120_000, "the upload to finish");
    assert.ok(expired >= 1, `the store refused an expired URL (${expired})`);
    assert.ok(signs >= 1, `the page signed URLs again (${signs})`);
    assert.equal((await completedRows(page))[0].sha256, file.sha256);
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("when the store's URLs cannot be reached, parts go through the API, and the page says so", async () => {
  const server = await startServer();
  const ctx = await chrome.newContext();
  try {
    const page = await openPage(ctx, server);
    await page.route("**/p/**", (route) => route.abort("addressunreachable"));
    const viaApi = [];
    page.on("request", (r) => {
      if (r.method() === "PUT" && /\/v1\/uploads\/[0-9a-f]+\/parts\/\d+$/.test(r.url())) viaApi.push(r.url());
    });
    const file = await randomFile(dir, "fallback.bin", 18 * MIB);
    await page.setInputFiles("#files", file.path);
    await until(async () => (await completedRows(page)).length === 1, 120_000, "the upload to finish");
    assert.equal((await completedRows(page))[0].sha256, file.sha256);
    assert.equal(viaApi.length, 3, "all three parts went through the API");
    const note = await page.$eval("#notice", (e) => (e.hidden ? "" : e.textContent));
    assert.match(note, /through the ferry server/);
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("pause stops sending, resume carries on, and the download link gives the object back", async () => {
  const server = await startServer();
  const ctx = await chrome.newContext({ acceptDownloads: true });
  try {
    const page = await openPage(ctx, server);
    await throttleParts(page, 300);
    const file = await randomFile(dir, "paused.bin", 40 * MIB);
    await page.setInputFiles("#files", file.path);
    const upload = await until(async () => {
      const list = (await api(server, "/uploads?state=uploading")).body.uploads;
      return list.find((u) => u.key === "paused.bin");
    }, 30_000, "the upload to be created");
    await until(async () => (await api(server, `/uploads/${upload.upload_id}`)).body.parts.length >= 1, 60_000, "a part stored");
    await page.click("#queue li .pause");
    await until(async () => (await page.$eval("#queue li", (e) => e.dataset.state)) === "paused", 10_000, "paused");
    const sentWhilePaused = [];
    page.on("request", (r) => { if (r.method() === "PUT") sentWhilePaused.push(r.url()); });
    const heldAtPause = (await api(server, `/uploads/${upload.upload_id}`)).body.parts.length;
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(sentWhilePaused, [], "nothing is sent while paused");
    await page.click("#queue li .resume");
    await until(async () => (await completedRows(page)).length === 1, 120_000, "the upload to finish");
    const st = (await api(server, `/uploads/${upload.upload_id}`)).body;
    assert.equal(st.result.sha256, file.sha256);
    assert.ok(sentWhilePaused.length <= st.part_count - heldAtPause + 4, "resumed, not restarted");

    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#done-list a")]);
    const saved = await download.path();
    const { createHash } = await import("node:crypto");
    const { readFileSync } = await import("node:fs");
    assert.equal(createHash("sha256").update(readFileSync(saved)).digest("hex"), file.sha256);
  } finally {
    await ctx.close();
    await server.stop();
  }
});
