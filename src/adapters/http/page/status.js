"use strict";
// Live values for the status page. Every value from the loader goes into the
// page through textContent or a property, never through HTML parsing.
(() => {
  const byId = (id) => document.getElementById(id);
  const el = {
    health: byId("health"), session: byId("session"), cacheDir: byId("cache-dir"),
    unlockState: byId("unlock-state"), unlockElapsed: byId("unlock-elapsed"), unlockHint: byId("unlock-hint"),
    unlockProgress: byId("unlock-progress"), unlockBytes: byId("unlock-bytes"), unlockError: byId("unlock-error"),
    cacheBytes: byId("cache-bytes"), cacheEntries: byId("cache-entries"), cacheLimit: byId("cache-limit"),
    cacheMeterBox: byId("cache-meter-box"), cacheMeter: byId("cache-meter"), cacheRows: byId("cache-rows"),
    cacheProblem: byId("cache-problem"), updated: byId("updated"),
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

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store", headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return response.json();
  }

  function stamp() {
    const now = new Date();
    el.updated.dateTime = now.toISOString();
    setText(el.updated, now.toLocaleTimeString("en-GB"));
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
    } catch (e) {
      setBadge(el.session, "unknown", "bad");
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
        const row = document.createElement("tr");
        const cell = document.createElement("td");
        cell.colSpan = 3;
        cell.className = "muted";
        cell.textContent = "Nothing cached yet: a POST /load fills the cache.";
        row.append(cell);
        el.cacheRows.replaceChildren(row);
      } else {
        el.cacheRows.replaceChildren(...entries.map(cacheRow));
      }
      showProblem(el.cacheProblem, "");
    } catch (e) {
      showProblem(el.cacheProblem, "The cache could not be read: " + e.message);
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
      stamp();
    } catch (e) {
      setBadge(el.unlockState, "unknown", "bad");
      setText(el.unlockHint, "The loader did not answer: " + e.message);
    }
  }

  let unlockInFlight = false;
  async function pollUnlock() {
    if (unlockInFlight) return;
    unlockInFlight = true;
    try {
      await refreshUnlock();
    } finally {
      unlockInFlight = false;
    }
  }

  async function pollSlow() {
    await Promise.all([refreshService(), refreshCache()]);
    stamp();
  }

  pollSlow();
  pollUnlock();
  setInterval(pollUnlock, 1000);
  setInterval(pollSlow, 5000);
})();
