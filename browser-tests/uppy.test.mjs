// Stock Uppy (@uppy/core + @uppy/aws-s3 from npm, bundled here for the test only) uploads to
// ferry from another origin: the multipart path for large files, the form POST for small ones.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, before, test } from "node:test";

import * as esbuild from "esbuild";

import { ROOT, TOKEN, api, browser, startServer, until } from "./support.mjs";

const MIB = 1024 * 1024;
let chrome;
let bundle;

before(async () => {
  chrome = await browser();
  const built = await esbuild.build({
    entryPoints: [join(ROOT, "browser-tests", "uppy-app.mjs")],
    bundle: true,
    write: false,
    format: "iife",
    platform: "browser",
    logLevel: "error",
  });
  bundle = built.outputFiles[0].text;
});

after(async () => {
  await chrome?.close();
});

/** Serves the Uppy app from its own origin on loopback, so every call to ferry is cross-origin. */
async function appServer() {
  const http = createServer((req, res) => {
    if (req.url === "/app.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    } else {
      res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><script src="/app.js"></script>');
    }
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${http.address().port}`, close: () => http.close() };
}

test("an unmodified Uppy app uploads to ferry, multipart and by form POST", async () => {
  const app = await appServer();
  const server = await startServer(["--cors-origin", app.origin]);
  const ctx = await chrome.newContext();
  try {
    const page = await ctx.newPage();
    await page.goto(`${app.origin}/`);
    const large = randomBytes(12 * MIB + 3);
    const small = randomBytes(700 * 1024);
    const files = [
      { name: "large.bin", base64: large.toString("base64") },
      { name: "small.bin", base64: small.toString("base64") },
    ];
    const result = await page.evaluate(
      (args) => window.uploadWithUppy(args),
      { endpoint: server.url, token: TOKEN, files, multipartOver: 5 * MIB },
    );
    assert.deepEqual(result.failed, []);
    assert.equal(result.successful.length, 2);

    const completed = await until(async () => {
      const list = (await api(server, "/uploads?state=completed")).body.uploads;
      return list.length === 2 && list;
    }, 20_000, "two completed uploads");
    for (const [name, bytes] of [["large.bin", large], ["small.bin", small]]) {
      const upload = completed.find((u) => u.key.endsWith(name));
      assert.ok(upload, `${name} is stored (keys: ${completed.map((u) => u.key)})`);
      const st = (await api(server, `/uploads/${upload.upload_id}`)).body;
      assert.equal(st.result.sha256, createHash("sha256").update(bytes).digest("hex"), name);
      assert.equal(st.result.size, bytes.length);
      const got = await fetch(`${server.url}/v1/objects/${encodeURIComponent(upload.key)}`, {
        headers: { Authorization: `Bearer ${TOKEN}` },
      });
      assert.deepEqual(Buffer.from(await got.arrayBuffer()), bytes, `${name} reads back`);
    }
    const large_ = completed.find((u) => u.key.endsWith("large.bin"));
    assert.equal(large_.part_count, 3, "the large file went in Uppy's 5 MiB parts");
  } finally {
    await ctx.close();
    await server.stop();
    app.close();
  }
});
