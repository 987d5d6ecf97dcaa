"use strict";
// Live values for the status page. Every value from the loader goes into the
// page through textContent or a property, never through HTML parsing.
// When the loader requires its client token (LOADER_TOKEN_FILE), the page
// asks for it once and keeps it in this tab's sessionStorage only; it goes
// out in the Authorization header of each request, never in a URL or a log.
(() => {
  const byId = (id) => document.getElementById(id);
  const el = {
    health: byId("health"), session: byId("session"), cacheDir: byId("cache-dir"), crypto: byId("crypto"),
    unlockState: byId("unlock-state"), unlockElapsed: byId("unlock-elapsed"), unlockHint: byId("unlock-hint"),
    unlockProgress: byId("unlock-progress"), unlockBytes: byId("unlock-bytes"), unlockError: byId("unlock-error"),
    cacheBytes: byId("cache-bytes"), cacheEntries: byId("cache-entries"), cacheLimit: byId("cache-limit"),
    cacheMeterBox: byId("cache-meter-box"), cacheMeter: byId("cache-meter"), cacheRows: byId("cache-rows"),
    cacheProblem: byId("cache-problem"), updated: byId("updated"),
    tokenForm: byId("token-form"), tokenInput: byId("token-input"), tokenRefused: byId("token-refused"),
    tokenStored: byId("token-stored"), tokenForget: byId("token-forget"),
    transferRows: byId("transfer-rows"), throughput: byId("throughput"), throughputNote: byId("throughput-note"),
  };

  const HINTS = {
    idle: "Not started. POST /unlock with the operator's credentials starts it.",
    authenticating: "Logging in to the Resource API.",
    downloading_key: "Fetching the archive's key fragment.",
    decrypting: "The archive streams through decryption into Docker.",
    loading_images: "Docker finishes the import; the images are then checked.",
    ready: "The images are loaded and checked.",
    error: "The last run failed; POST /unlock tries again.",
  };
  const RUNNING = new Set(["authenticating", "downloading_key", "decrypting", "loading_images"]);
  const grouped = new Intl.NumberFormat("en");

  const count = (value) => (Number.isFinite(value) && value >= 0 ? value : 0);

  function bytes(value) {
    const n = count(value);
    const units = ["KiB", "MiB", "GiB", "TiB"];
    if (n < 1024) return grouped.format(n) + (n === 1 ? " byte" : " bytes");
    let scaled = n;
    let unit = "bytes";
    for (const next of units) {
      if (scaled < 1024) break;
      scaled /= 1024;
      unit = next;
    }
    return scaled.toFixed(scaled < 10 ? 2 : 1) + " " + unit;
  }

  function duration(ms) {
    const s = Math.floor(count(ms) / 1000);
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setBadge(node, text, tone) {
    setText(node, text);
    node.dataset.tone = tone;
  }

  function showProblem(node, text) {
    setText(node, text);
    node.hidden = !text;
  }

  // The client token: sessionStorage (this tab only, gone when it closes),
  // or memory where the browser refuses storage; nothing that outlives the tab.
  const TOKEN_KEY = "azaion-loader-token";
  let memoryToken = null;
  const token = {
    get() {
      try {
        return window.sessionStorage.getItem(TOKEN_KEY) || null;
      } catch (e) {
        return memoryToken;
      }
    },
    set(value) {
      try {
        window.sessionStorage.setItem(TOKEN_KEY, value);
        memoryToken = null;
      } catch (e) {
        memoryToken = value;
      }
    },
    clear() {
      memoryToken = null;
      try {
        window.sessionStorage.removeItem(TOKEN_KEY);
      } catch (e) {
        // Nothing was stored.
      }
    },
  };

  // A 401: the loader wants its client token (or refused the one sent).
  class TokenNeeded extends Error {
    constructor(path) {
      super(path + " needs the loader's client token");
    }
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      return typeof body.detail === "string" ? body.detail.slice(0, 200) : "";
    } catch (e) {
      return "";
    }
  }

  const FETCH_TIMEOUT_MS = 10000;
  // A GET with the token (if any); a 401 asks for it, another error names the status.
  async function fetchOk(path, accept) {
    const sent = token.get();
    const headers = { accept };
    if (sent) headers.authorization = "Bearer " + sent;
    // A loader that stops answering must not stall the polling for good.
    const signal = typeof AbortSignal.timeout === "function" ? AbortSignal.timeout(FETCH_TIMEOUT_MS) : undefined;
    const response = await fetch(path, { cache: "no-store", headers, signal });
    if (response.status === 401) {
      tokenRefusedBy(sent);
      throw new TokenNeeded(path);
    }
    if (!response.ok) {
      const detail = await detailOf(response);
      throw new Error(path + " answered " + response.status + (detail ? ": " + detail : ""));
    }
    return response;
  }

  async function getJson(path) {
    return (await fetchOk(path, "application/json")).json();
  }

  // The Prometheus text of /metrics.
  async function getText(path) {
    return (await fetchOk(path, "text/plain")).text();
  }

  // --- the token form --------------------------------------------------------
  let refused = false;

  function showTokenState() {
    const stored = token.get() !== null;
    el.tokenStored.hidden = !stored;
    el.tokenRefused.hidden = !refused;
  }

  function askForToken() {
    showTokenState();
    if (el.tokenForm.hidden) {
      el.tokenForm.hidden = false;
      el.tokenInput.focus();
    }
  }

  // Called for each 401. A 401 for a request that went out before the token
  // changed says nothing about the current token, so it is ignored.
  function tokenRefusedBy(sent) {
    const current = token.get();
    if (sent !== current) return;
    if (sent !== null) {
      token.clear();
      refused = true;
    }
    askForToken();
  }

  el.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = el.tokenInput.value.trim();
    if (!/^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(value)) {
      el.tokenInput.focus();
      return;
    }
    token.set(value);
    el.tokenInput.value = "";
    refused = false;
    el.tokenForm.hidden = true;
    showTokenState();
    pollNow();
  });

  el.tokenForget.addEventListener("click", () => {
    token.clear();
    refused = false;
    showTokenState();
    pollNow();
  });

  let polls = 0;
  function stamp() {
    const now = new Date();
    el.updated.dateTime = now.toISOString();
    setText(el.updated, now.toLocaleTimeString("en-GB"));
    polls += 1;
    el.updated.dataset.polls = String(polls);
  }

  async function refreshService() {
    try {
      const health = await getJson("/health");
      const healthy = health.status === "healthy";
      setBadge(el.health, String(health.status), healthy ? "ok" : "bad");
    } catch (e) {
      setBadge(el.health, "unreachable", "bad");
    }
    try {
      const status = await getJson("/status");
      const loggedIn = status.authenticated === true;
      setBadge(el.session, loggedIn ? "logged in" : "not logged in", loggedIn ? "ok" : "unknown");
      setText(el.cacheDir, String(status.modelCacheDir ?? "—"));
      setText(el.crypto, String(status.cryptoBackend ?? "—"));
    } catch (e) {
      if (e instanceof TokenNeeded) setBadge(el.session, "token needed", "unknown");
      else setBadge(el.session, "unknown", "bad");
    }
  }

  function cacheRow(entry) {
    const row = document.createElement("tr");
    for (const [text, numeric] of [[entry.folder, false], [entry.name, false], [bytes(entry.bytes), true]]) {
      const cell = document.createElement("td");
      cell.textContent = String(text ?? "");
      if (numeric) cell.className = "num";
      row.append(cell);
    }
    return row;
  }

  function cacheMessage(text) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 3;
    cell.className = "muted";
    cell.textContent = text;
    row.append(cell);
    el.cacheRows.replaceChildren(row);
  }

  async function refreshCache() {
    try {
      const cache = await getJson("/cache");
      const usage = cache.usage ?? {};
      setText(el.cacheBytes, bytes(usage.bytes));
      setText(el.cacheEntries, grouped.format(count(usage.entries)));
      const limit = Number.isFinite(usage.limit) ? usage.limit : null;
      setText(el.cacheLimit, limit === null ? "unlimited" : bytes(limit));
      el.cacheMeterBox.hidden = limit === null;
      if (limit !== null && limit > 0) {
        el.cacheMeter.value = Math.min(1, count(usage.bytes) / limit);
      }
      const entries = Array.isArray(cache.entries) ? cache.entries : [];
      if (entries.length === 0) {
        cacheMessage("Nothing cached yet: a POST /load fills the cache.");
      } else {
        el.cacheRows.replaceChildren(...entries.map(cacheRow));
      }
      showProblem(el.cacheProblem, "");
    } catch (e) {
      if (e instanceof TokenNeeded) {
        cacheMessage("—");
        showProblem(el.cacheProblem, "The cache is shown once the loader's client token is given above.");
      } else {
        showProblem(el.cacheProblem, "The cache could not be read: " + e.message);
      }
    }
  }

  async function refreshUnlock() {
    try {
      const unlock = await getJson("/unlock/status");
      const state = String(unlock.state);
      const tone = state === "ready" ? "ok" : state === "error" ? "bad" : RUNNING.has(state) ? "busy" : "unknown";
      setBadge(el.unlockState, state.replace(/_/g, " "), tone);
      el.unlockState.dataset.state = state;
      setText(el.unlockHint, HINTS[state] ?? "");
      const progress = unlock.progress ?? {};
      setText(el.unlockElapsed, duration(progress.phase_elapsed_ms));
      const done = count(progress.bytes_done);
      const total = count(progress.bytes_total);
      if (total > 0) {
        el.unlockProgress.max = total;
        el.unlockProgress.value = Math.min(done, total);
        const percent = Math.floor((Math.min(done, total) / total) * 100);
        setText(el.unlockProgress, percent + "%");
        setText(el.unlockBytes, percent + "% · " + bytes(done) + " of " + bytes(total));
      } else {
        el.unlockProgress.max = 1;
        el.unlockProgress.value = state === "ready" ? 1 : 0;
        setText(el.unlockProgress, state === "ready" ? "100%" : "0%");
        setText(el.unlockBytes, state === "ready" ? "Done." : "No archive is being decrypted.");
      }
      showProblem(el.unlockError, state === "error" && unlock.error ? String(unlock.error) : "");
    } catch (e) {
      delete el.unlockState.dataset.state;
      if (e instanceof TokenNeeded) {
        setBadge(el.unlockState, "token needed", "unknown");
        setText(el.unlockHint, "The unlock state is shown once the loader's client token is given above.");
      } else {
        setBadge(el.unlockState, "unknown", "bad");
        setText(el.unlockHint, "The loader did not answer: " + e.message);
      }
    }
  }

  function cell(text, className) {
    const node = document.createElement("td");
    node.textContent = String(text ?? "");
    if (className) node.className = className;
    return node;
  }

  function transferRow(t) {
    const done = count(t.bytes_done);
    const total = Number.isFinite(t.bytes_total) && t.bytes_total > 0 ? t.bytes_total : null;
    const bar = document.createElement("progress");
    const share = total === null ? null : Math.floor((Math.min(done, total) / total) * 100);
    if (total !== null) {
      bar.max = total;
      bar.value = Math.min(done, total);
      bar.textContent = share + "%";
    }
    bar.setAttribute("aria-label", String(t.resource ?? "") + (share === null ? ": length not known yet" : ": " + share + "%"));
    const progress = document.createElement("td");
    progress.append(bar);
    const row = document.createElement("tr");
    row.append(
      cell(t.kind),
      cell(t.resource),
      progress,
      cell(bytes(done) + (total === null ? "" : " of " + bytes(total)), "num"),
      cell(bytes(t.rate_bytes_per_sec) + "/s", "num"),
    );
    return row;
  }

  function transferMessage(text) {
    const row = document.createElement("tr");
    const only = cell(text, "muted");
    only.colSpan = 5;
    row.append(only);
    el.transferRows.replaceChildren(row);
  }

  async function refreshTransfers() {
    try {
      const body = await getJson("/transfers");
      const list = Array.isArray(body.transfers) ? body.transfers : [];
      if (list.length === 0) transferMessage("No transfer in progress.");
      else el.transferRows.replaceChildren(...list.map(transferRow));
    } catch (e) {
      transferMessage(e instanceof TokenNeeded ? "Shown once the loader's client token is given above." : "The transfers could not be read: " + e.message);
    }
  }

  // The throughput chart: the byte counters of /metrics sampled every slow
  // round, as rates between samples, drawn as two lines of an inline SVG.
  const SAMPLES = 61;
  const samples = [];
  // The namespace of the page's own <svg> element (no address written here).
  const SVG = el.throughput.namespaceURI;

  function counter(text, name) {
    const match = text.match(new RegExp("^" + name + " ([0-9.eE+]+)$", "m"));
    return match ? Number(match[1]) : 0;
  }

  function line(className, rates, key, peak) {
    const node = document.createElementNS(SVG, "polyline");
    node.setAttribute("class", className);
    const step = 300 / (SAMPLES - 2);
    const start = 300 - step * (rates.length - 1);
    node.setAttribute("points", rates.map((r, i) => (start + i * step).toFixed(1) + "," + (58 - (r[key] / peak) * 54).toFixed(1)).join(" "));
    return node;
  }

  function drawThroughput() {
    const rates = [];
    for (let i = 1; i < samples.length; i += 1) {
      const seconds = Math.max(0.001, (samples[i].at - samples[i - 1].at) / 1000);
      rates.push({
        served: Math.max(0, samples[i].served - samples[i - 1].served) / seconds,
        uploaded: Math.max(0, samples[i].uploaded - samples[i - 1].uploaded) / seconds,
      });
    }
    if (rates.length === 0) return;
    const peak = Math.max(1, ...rates.map((r) => Math.max(r.served, r.uploaded)));
    el.throughput.replaceChildren(line("served", rates, "served", peak), line("uploaded", rates, "uploaded", peak));
    const last = rates[rates.length - 1];
    const served = document.createElement("span");
    served.className = "legend-served";
    served.textContent = "served " + bytes(last.served) + "/s";
    const uploaded = document.createElement("span");
    uploaded.className = "legend-uploaded";
    uploaded.textContent = "uploaded " + bytes(last.uploaded) + "/s";
    const quiet = rates.every((r) => r.served === 0 && r.uploaded === 0);
    el.throughputNote.replaceChildren("Now: ", served, ", ", uploaded, quiet ? " · no traffic in this window" : " · peak " + bytes(peak) + "/s");
  }

  async function refreshThroughput() {
    try {
      const text = await getText("/metrics");
      samples.push({
        at: Date.now(),
        served: counter(text, "azaion_load_bytes_total"),
        uploaded: counter(text, "azaion_upload_bytes_total"),
      });
      while (samples.length > SAMPLES) samples.shift();
      drawThroughput();
    } catch (e) {
      setText(el.throughputNote, e instanceof TokenNeeded ? "Shown once the loader's client token is given above." : "The metrics could not be read: " + e.message);
    }
  }

  // One poll round every second: the unlock state each time, the service and
  // the cache every 5 s (and at once after a token is given or forgotten).
  // Rounds never overlap; each completed round updates the footer's time
  // and its data-polls count.
  const ROUND_MS = 1000;
  const SLOW_MS = 5000;
  let lastSlow = -Infinity;
  let inFlight = false;
  let again = false;
  let timer = 0;

  async function poll(forceSlow) {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    clearTimeout(timer);
    try {
      const rounds = [refreshUnlock(), refreshTransfers()];
      const now = Date.now();
      if (forceSlow || now - lastSlow >= SLOW_MS) {
        lastSlow = now;
        rounds.push(refreshService(), refreshCache(), refreshThroughput());
      }
      await Promise.all(rounds);
      stamp();
    } finally {
      inFlight = false;
      if (again) {
        again = false;
        poll(true);
      } else {
        timer = setTimeout(() => poll(false), ROUND_MS);
      }
    }
  }

  // After a token is given or forgotten: a full round now (or right after
  // the one in flight).
  function pollNow() {
    poll(true);
  }

  showTokenState();
  poll(true);
})();
