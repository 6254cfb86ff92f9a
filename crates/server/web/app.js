// ferry's upload page: a queue of files, each cut into the parts the server planned, sent in
// parallel straight to their signed URLs, retried with backoff, re-signed when a URL expires,
// sent through the API when the signed URL cannot be reached, and resumed after a reload from the
// server's own list of parts. Memory stays flat: a part is a slice of the file, read only while
// it is being sent.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "ferry.token";
const RESUME_KEY = "ferry.unfinished";
const RETRY_CAP_MS = 30_000;
const MAX_ATTEMPTS = 10;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A part send that failed before any HTTP answer (connection refused, blocked, offline).
class NetworkError extends Error {}

class Aborted extends Error {}

let token = localStorage.getItem(TOKEN_KEY) || "";
// Set when a signed URL could not be reached but the API could: parts go through the API.
let viaApi = false;

async function api(path, { method = "GET", body } = {}) {
  let res;
  try {
    res = await fetch(`/v1${path}`, {
      method,
      headers: {
        Authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new NetworkError(`the server cannot be reached: ${e.message}`);
  }
  const text = await res.text();
  const data = text ? JSON.parse(text) : {};
  if (!res.ok) {
    const err = data.error || {};
    throw new ApiError(res.status, err.code || "http_" + res.status, err.message || res.statusText);
  }
  return data;
}

function human(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${bytes} B` : `${v.toFixed(1)} ${units[u]}`;
}

function duration(seconds) {
  if (!isFinite(seconds)) return "—";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); reject(new Aborted()); }, { once: true });
  });

function notice(text) {
  const n = $("#notice");
  n.textContent = text;
  n.hidden = false;
}

// --- resume records: one per unfinished file, by name, size and last-modified time -----------

const fileKey = (f) => `${f.name}|${f.size}|${f.lastModified}`;

function unfinished() {
  try { return JSON.parse(localStorage.getItem(RESUME_KEY) || "{}"); } catch { return {}; }
}

function remember(file, session) {
  const all = unfinished();
  all[fileKey(file)] = { ...session, name: file.name, size: file.size };
  localStorage.setItem(RESUME_KEY, JSON.stringify(all));
}

function forget(file) {
  const all = unfinished();
  delete all[fileKey(file)];
  localStorage.setItem(RESUME_KEY, JSON.stringify(all));
}

// --- one PUT of one part, with upload progress --------------------------------------------------

function sendPart(url, blob, headers, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr.getResponseHeader("ETag") || "");
        return;
      }
      let code = "http_" + xhr.status, message = xhr.statusText || "the store refused the part";
      try {
        const err = JSON.parse(xhr.responseText).error;
        if (err) { code = err.code; message = err.message; }
      } catch { /* not ferry's JSON: S3's XML or nothing */ }
      reject(new ApiError(xhr.status, code, message));
    };
    xhr.onerror = () => reject(new NetworkError("the part's URL cannot be reached"));
    xhr.onabort = () => reject(new Aborted());
    signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(blob);
  });
}

async function apiReachable() {
  try { return (await fetch("/healthz")).ok; } catch { return false; }
}

// --- an upload -----------------------------------------------------------------------------------

class Upload {
  constructor(file) {
    this.file = file;
    this.state = "queued";
    this.session = null;
    this.urls = new Map();
    this.done = new Map(); // part number → size
    this.inflight = new Map(); // part number → bytes sent so far
    this.resumedBytes = 0;
    this.samples = [];
    this.el = this.render();
  }

  render() {
    const el = $("#item-template").content.firstElementChild.cloneNode(true);
    el.querySelector(".name").textContent = this.file.name;
    el.querySelector(".pause").onclick = () => this.pause();
    el.querySelector(".resume").onclick = () => this.resume();
    el.querySelector(".cancel").onclick = () => this.cancel();
    $("#queue").append(el);
    return el;
  }

  get sent() {
    let n = 0;
    for (const s of this.done.values()) n += s;
    for (const s of this.inflight.values()) n += s;
    return n;
  }

  show(stateText) {
    const el = this.el;
    el.className = `item ${this.state}`;
    el.dataset.state = this.state;
    const size = this.file.size;
    const sent = Math.min(this.sent, size);
    el.querySelector("progress").value = size === 0 ? (this.state === "done" ? 1 : 0) : sent / size;
    const now = performance.now();
    this.samples.push([now, sent]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const rate = now > t0 ? ((sent - b0) * 1000) / (now - t0) : 0;
    const active = this.state === "uploading";
    const eta = active && rate > 0 ? duration((size - sent) / rate) : "—";
    el.querySelector(".meta").textContent = active
      ? `${human(sent)} / ${human(size)} · ${human(rate)}/s · ETA ${eta}`
      : `${human(sent)} / ${human(size)}`;
    if (stateText !== undefined) el.querySelector(".state").textContent = stateText;
    el.querySelector(".pause").hidden = !["uploading", "queued"].includes(this.state);
    el.querySelector(".resume").hidden = this.state !== "paused";
    el.querySelector(".cancel").hidden = ["done", "cancelled"].includes(this.state);
    totals();
  }

  // Finds the unfinished upload of this file on the server, or starts one.
  async open() {
    const earlier = unfinished()[fileKey(this.file)];
    if (earlier) {
      try {
        const st = await api(`/uploads/${earlier.upload_id}`);
        if (st.state === "uploading" && st.size === this.file.size) {
          this.session = earlier;
          for (const p of st.parts) this.done.set(p.part_number, p.size);
          this.resumedBytes = this.sent;
          return;
        }
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
      }
      forget(this.file);
    }
    const created = await api("/uploads", {
      method: "POST",
      body: { name: this.file.name, size: this.file.size, content_type: this.file.type || undefined },
    });
    this.session = {
      upload_id: created.upload_id,
      key: created.key,
      part_size: created.part_size,
      part_count: created.part_count,
    };
    for (const p of created.parts) this.urls.set(p.part_number, p);
    remember(this.file, this.session);
  }

  span(n) {
    const offset = (n - 1) * this.session.part_size;
    return { offset, size: Math.min(this.session.part_size, this.file.size - offset) };
  }

  // A URL for part `n` that will not expire in the next half minute.
  async url(n) {
    const u = this.urls.get(n);
    if (u && Date.parse(u.expires_at) - Date.now() > 30_000) return u;
    const wanted = [];
    for (let k = n; k <= this.session.part_count && wanted.length < 64; k++) if (!this.done.has(k)) wanted.push(k);
    const signed = await api(`/uploads/${this.session.upload_id}/parts/sign`, {
      method: "POST",
      body: { part_numbers: wanted },
    });
    for (const p of signed.parts) this.urls.set(p.part_number, p);
    return this.urls.get(n);
  }

  async putPart(n, signal) {
    const { offset, size } = this.span(n);
    const blob = this.file.slice(offset, offset + size);
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) throw new Aborted();
      try {
        let target, headers;
        if (viaApi) {
          target = `/v1/uploads/${this.session.upload_id}/parts/${n}`;
          headers = { Authorization: `Bearer ${token}` };
        } else {
          const u = await this.url(n);
          target = u.url;
          headers = u.headers || {};
        }
        const etag = await sendPart(target, blob, headers, (loaded) => {
          this.inflight.set(n, loaded);
          this.show();
        }, signal);
        this.inflight.delete(n);
        this.done.set(n, size);
        return etag;
      } catch (e) {
        this.inflight.delete(n);
        if (e instanceof Aborted) throw e;
        if (e instanceof NetworkError && !viaApi && (await apiReachable())) {
          viaApi = true;
          notice("The store's signed URLs cannot be reached from this browser; parts now go through the ferry server instead.");
          continue;
        }
        if (e instanceof ApiError && e.code === "url_expired") {
          this.urls.delete(n);
          continue;
        }
        const retryable = e instanceof NetworkError || (e instanceof ApiError && (e.status >= 500 || e.status === 408 || e.status === 429));
        if (!retryable || attempt >= MAX_ATTEMPTS) throw e;
        const delay = Math.min(RETRY_CAP_MS, 1000 * 2 ** (attempt - 1));
        this.show(`part ${n} failed (${e.message}); retrying in ${Math.round(delay / 1000)} s`);
        await sleep(delay, signal);
      }
    }
  }

  async run() {
    this.state = "uploading";
    this.controller = new AbortController();
    const signal = this.controller.signal;
    this.show("starting");
    try {
      if (!this.session) await this.open();
      this.show(this.resumedBytes > 0 ? `resuming: ${human(this.resumedBytes)} already on the server` : "uploading");
      const hashing = $("#verify").checked ? this.hash(signal) : null;
      const pending = [];
      for (let n = 1; n <= this.session.part_count; n++) if (!this.done.has(n)) pending.push(n);
      const lanes = Math.max(1, Math.min(16, parseInt($("#concurrency").value, 10) || 4));
      const worker = async () => {
        while (pending.length > 0) await this.putPart(pending.shift(), signal);
      };
      await Promise.all(Array.from({ length: lanes }, worker));
      const sha256 = hashing ? await hashing : undefined;
      this.show("completing");
      const info = await api(`/uploads/${this.session.upload_id}/complete`, {
        method: "POST",
        body: sha256 ? { sha256 } : {},
      });
      forget(this.file);
      this.state = "done";
      this.show(`done · sha256 ${info.sha256}`);
      addCompleted(info);
    } catch (e) {
      if (e instanceof Aborted) return;
      // The other lanes stop too.
      this.controller.abort();
      this.inflight.clear();
      this.state = "failed";
      this.show(`failed: ${e.message}`);
    }
  }

  // SHA-256 of the whole file, read slice by slice in order alongside the upload.
  async hash(signal) {
    const h = new window.Sha256();
    const step = 8 * 1024 * 1024;
    for (let at = 0; at < this.file.size; at += step) {
      if (signal.aborted) throw new Aborted();
      h.update(new Uint8Array(await this.file.slice(at, at + step).arrayBuffer()));
    }
    return h.hex();
  }

  pause() {
    if (this.state !== "uploading" && this.state !== "queued") return;
    this.state = "paused";
    this.controller?.abort();
    this.inflight.clear();
    this.show("paused");
    pump();
  }

  resume() {
    if (this.state !== "paused") return;
    this.state = "queued";
    this.show("queued");
    pump();
  }

  async cancel() {
    const was = this.state;
    this.state = "cancelled";
    this.controller?.abort();
    this.inflight.clear();
    this.show("cancelling");
    if (this.session && was !== "done") {
      try { await api(`/uploads/${this.session.upload_id}`, { method: "DELETE" }); } catch (e) {
        this.show(`cancelled here, but the server said: ${e.message}`);
        return;
      }
    }
    forget(this.file);
    this.show("cancelled");
    showUnfinished();
    pump();
  }
}

// --- the queue -----------------------------------------------------------------------------------

const uploads = [];

// One file at a time uses every lane; the rest wait their turn.
function pump() {
  if (uploads.some((u) => u.state === "uploading")) return;
  const next = uploads.find((u) => u.state === "queued");
  if (next) next.run().finally(() => { showUnfinished(); pump(); });
}

function totals() {
  const live = uploads.filter((u) => u.state !== "cancelled");
  $("#total").hidden = live.length < 2;
  const size = live.reduce((n, u) => n + u.file.size, 0);
  const sent = live.reduce((n, u) => n + Math.min(u.sent, u.file.size), 0);
  $("#total-bar").value = size > 0 ? sent / size : 0;
  $("#total-text").textContent = `${human(sent)} / ${human(size)} · ${live.filter((u) => u.state === "done").length} of ${live.length} files`;
}

function add(files) {
  for (const file of files) {
    const u = new Upload(file);
    uploads.push(u);
    u.show(unfinished()[fileKey(file)] ? "queued (will resume)" : "queued");
  }
  pump();
}

async function addCompleted(info) {
  $("#done").hidden = false;
  const row = document.createElement("tr");
  const link = document.createElement("a");
  link.textContent = "download";
  link.href = "#";
  link.onclick = async (e) => {
    e.preventDefault();
    const key = info.key.split("/").map(encodeURIComponent).join("/");
    const signed = await api(`/objects/${key}/sign`, { method: "POST" });
    window.location.href = signed.url;
  };
  const cells = [info.key, human(info.size), info.sha256 || "—"];
  for (const [i, text] of cells.entries()) {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 2) td.className = "sha";
    row.append(td);
  }
  const td = document.createElement("td");
  td.append(link);
  row.append(td);
  row.dataset.key = info.key;
  row.dataset.sha256 = info.sha256 || "";
  $("#done-list").prepend(row);
}

function showUnfinished() {
  const all = Object.values(unfinished());
  const inQueue = new Set(uploads.filter((u) => u.state !== "cancelled").map((u) => u.session?.upload_id));
  const waiting = all.filter((s) => !inQueue.has(s.upload_id));
  $("#unfinished").hidden = waiting.length === 0;
  $("#unfinished-list").replaceChildren(
    ...waiting.map((s) => {
      const li = document.createElement("li");
      li.textContent = `${s.name} (${human(s.size)})`;
      return li;
    }),
  );
}

// --- the token -----------------------------------------------------------------------------------

async function useToken(candidate) {
  token = candidate;
  try {
    await api("/uploads?state=uploading");
  } catch (e) {
    $("#token-error").textContent = e instanceof ApiError && e.status === 401 ? "That token is not accepted." : e.message;
    $("#token-error").hidden = false;
    return false;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $("#token-panel").hidden = true;
  $("#upload-panel").hidden = false;
  $("#forget-token").hidden = false;
  showUnfinished();
  return true;
}

function start() {
  $("#token-form").onsubmit = (e) => {
    e.preventDefault();
    useToken($("#token").value.trim());
  };
  $("#forget-token").onclick = () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  };
  const drop = $("#drop");
  $("#files").onchange = (e) => { add(e.target.files); e.target.value = ""; };
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    add(e.dataTransfer.files);
  };
  setInterval(() => uploads.filter((u) => u.state === "uploading").forEach((u) => u.show()), 1000);
  if (token) {
    useToken(token).then((ok) => { if (!ok) $("#token-panel").hidden = false; });
  } else {
    $("#token-panel").hidden = false;
  }
}

start();
