// Logs: the daemon's own log (GET api/daemon/logs, docs/api.md), its newest lines then the live
// ones (an NDJSON follow), oldest at the top as a log reads. The level filter is the
// daemon's (?level=): a change starts a new follow with that filter, and it is kept in
// the address (#/logs?level=warning). Pause holds new lines (bounded) until resume.
// When the daemon restarts the follow ends; it starts again once the page is connected
// again, and the daemon's log on disk carries the lines of before.
//
// A module's own log is on its page (Modules → the module → Log).

import { formatClock, h } from "./dom.js";

export const title = "Logs";

const BACKLOG = 500;
const MAX_LINES = 1000;
const LEVELS = ["debug", "info", "warning", "error", "critical"];
const DEFAULT_LEVEL = "info";

/** "2026-12-08 14:03:07.250": a line may be from an earlier run, days ago. */
function formatTime(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${formatClock(ms)}`;
}

function levelOf(route) {
  const level = route.query.get("level");
  return LEVELS.includes(level) ? level : DEFAULT_LEVEL;
}

export function mount(root, client, route) {
  let level = levelOf(route);
  let controller = null; // the follow under way
  let paused = false;
  let ended = false;
  const held = [];

  const select = h(
    "select",
    { name: "level", "aria-label": "Least level shown" },
    LEVELS.map((l) => h("option", { value: l, selected: l === level }, `${l} and above`)),
  );
  const pauseButton = h("button", { type: "button", dataset: { action: "pause" } }, "Pause");
  const note = h("span.muted.count", { "aria-live": "polite" });
  const list = h("ol.log-lines", { "aria-label": "The daemon's log, oldest first", tabindex: "0" });
  const empty = h("p.muted.empty", {}, "No lines yet.");
  root.append(
    h(
      "div.toolbar",
      {},
      h("h2", {}, "Daemon log"),
      select,
      pauseButton,
      note,
    ),
    empty,
    list,
  );

  function row(line) {
    return h(
      "li.log-line",
      { dataset: { level: line.level } },
      h("time", { datetime: new Date(line.timestamp).toISOString() }, formatTime(line.timestamp)),
      h("span.level", {}, line.level.toUpperCase()),
      h("span.source", {}, line.source),
      // Text, never HTML: a line may hold anything.
      h("span.message", {}, line.message),
    );
  }

  function renderNote(state) {
    const shown = list.children.length;
    empty.hidden = shown > 0;
    pauseButton.textContent = paused ? `Resume${held.length ? ` (${held.length} new)` : ""}` : "Pause";
    pauseButton.setAttribute("aria-pressed", String(paused));
    if (state) note.dataset.state = state;
    const what = { following: "following", ended: "stream ended: reconnecting…", failed: note.dataset.reason };
    note.textContent = `${shown} lines, ${what[note.dataset.state] ?? ""}`;
  }

  function add(lines) {
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    list.append(...lines.map(row));
    while (list.children.length > MAX_LINES) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function receive(lines) {
    if (paused) {
      held.push(...lines);
      if (held.length > MAX_LINES) held.splice(0, held.length - MAX_LINES);
    } else {
      add(lines);
    }
    renderNote();
  }

  async function follow() {
    controller?.abort();
    controller = new AbortController();
    const mine = controller;
    ended = false;
    list.replaceChildren();
    held.length = 0;
    renderNote("following");
    try {
      const res = await client.stream(`api/daemon/logs?lines=${BACKLOG}&level=${level}&follow=true`, mine.signal);
      if (!res.ok) throw new Error(`${res.status} ${(await res.json().catch(() => ({}))).message ?? ""}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const parts = buffer.split("\n");
        buffer = parts.pop();
        const lines = parts.filter((p) => p.trim()).map((p) => JSON.parse(p));
        if (lines.length) receive(lines);
      }
      if (mine !== controller) return;
      ended = true;
      renderNote("ended");
      if (client.connected) setTimeout(() => mine === controller && follow(), 1000);
    } catch (err) {
      if (mine !== controller || err.name === "AbortError") return;
      ended = true;
      note.dataset.reason = `cannot read the log: ${err.message}`;
      renderNote("failed");
    }
  }

  // The daemon is back (after a restart): follow again.
  const onStatus = () => {
    if (ended && client.connected) follow();
  };
  client.addEventListener("status", onStatus);

  select.addEventListener("change", () => {
    level = select.value;
    history.replaceState(null, "", level === DEFAULT_LEVEL ? "#/logs" : `#/logs?level=${level}`);
    follow();
  });
  pauseButton.addEventListener("click", () => {
    paused = !paused;
    if (!paused) add(held.splice(0));
    renderNote();
  });

  follow();
  const unmount = () => {
    client.removeEventListener("status", onStatus);
    controller?.abort();
    controller = null;
  };
  // "#/logs?level=error" typed or linked while the view is open.
  unmount.update = (next) => {
    const wanted = levelOf(next);
    if (wanted === level) return;
    level = wanted;
    select.value = level;
    follow();
  };
  return unmount;
}
