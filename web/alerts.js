// Alerts: a module that crashed or failed, whatever view is open. The page listens to
// the daemon's lifecycle events (vessel.module.*) for as long as it is signed in; each
// crash, failure or failed install shows a toast, and a crashed or failed module stays
// "unseen" (a count on the Modules tab, a line on its card) until its page is opened or
// the line dismissed.
//
// Bounds: one toast per module (a crash loop updates it), at most MAX_TOASTS on screen,
// and as many unseen problems as there are modules. Lifecycle events are not retained:
// what happened while the page was closed is in each module's history instead.

import { formatClock, h } from "./dom.js";

const MAX_TOASTS = 4;
const TOAST_MS = 10000; // a crash the daemon restarts from; a failure stays until closed
const SEEN_KEYS = 64; // recent events, to drop one delivered twice

/** module id -> {event, reason, at, count}: problems not looked at yet. */
const unseen = new Map();
const changes = new EventTarget();
const seen = [];

/** The module's unseen problem, or undefined. */
export function problem(id) {
  return unseen.get(id);
}

/** The user looked (opened its page, or dismissed the line): forget its problem. */
export function acknowledge(id) {
  if (!unseen.delete(id)) return;
  document.querySelector(`.toast[data-module="${CSS.escape(id)}"]`)?.remove();
  changed();
}

/** Call `listener` whenever the unseen problems change; returns the unsubscribe. */
export function onChange(listener) {
  changes.addEventListener("change", listener);
  return () => changes.removeEventListener("change", listener);
}

function changed() {
  const badge = document.querySelector(".tabs a[data-view=modules] .count-badge");
  if (badge) {
    badge.hidden = unseen.size === 0;
    badge.textContent = String(unseen.size);
    badge.title = unseen.size ? `${unseen.size} module(s) crashed or failed: see Modules` : "";
  }
  changes.dispatchEvent(new Event("change"));
}

/** "crashed at 14:03:07: killed by SIGKILL" */
export function describeProblem(p) {
  const times = p.count > 1 ? ` (${p.count} times)` : "";
  const what = { crashed: "Crashed", failed: "Failed", install_failed: "Install failed" }[p.event];
  return `${what}${times} at ${formatClock(p.at)}${p.reason ? `: ${p.reason}` : ""}`;
}

const ADVICE = {
  crashed: "The daemon restarts it.",
  failed: "It is not restarted again: read its log and history, then Restart it.",
  install_failed: "Nothing was changed.",
};

function toast(id, p) {
  const box = document.getElementById("toasts");
  if (!box) return;
  box.querySelector(`.toast[data-module="${CSS.escape(id)}"]`)?.remove();
  const close = h("button.small.ghost", { type: "button", "aria-label": "Close" }, "✕");
  const el = h(
    "div.toast",
    { role: "alert", dataset: { module: id, event: p.event } },
    h(
      "div.toast-text",
      {},
      h("strong", {}, id),
      " ",
      describeProblem(p).replace(/^./, (c) => c.toLowerCase()),
      h("br"),
      h("span.muted", {}, ADVICE[p.event]),
    ),
    // A failed install has no module page (nothing was changed): its reason is in the
    // Installing list.
    h("a.small", { href: p.event === "install_failed" ? "#/modules" : `#/modules/${encodeURIComponent(id)}` }, "Open"),
    close,
  );
  close.addEventListener("click", () => el.remove());
  el.querySelector("a").addEventListener("click", () => el.remove());
  box.append(el);
  while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
  if (p.event === "crashed") setTimeout(() => el.remove(), TOAST_MS);
}

function receive(event) {
  const kind = event.name.replace(/^module\./, "");
  if (!(kind in ADVICE)) return;
  const key = `${event.name}/${event.data?.module}/${event.timestamp}`;
  if (seen.includes(key)) return; // two subscriptions of the page matched it
  seen.push(key);
  if (seen.length > SEEN_KEYS) seen.shift();
  const id = event.data?.module;
  if (typeof id !== "string") return;
  const before = unseen.get(id);
  const p = {
    event: kind,
    reason: event.data.reason ?? null,
    at: event.timestamp,
    count: before && before.event === kind ? before.count + 1 : 1,
  };
  if (kind !== "install_failed") {
    // A module in trouble until looked at; a failed install changed nothing to look at.
    unseen.set(id, p);
    changed();
  }
  toast(id, p);
}

/** Listen to `client`'s lifecycle events until the returned function is called. */
export function startAlerts(client) {
  const unsubscribe = client.subscribe("vessel.module.*", { onEvent: receive });
  return () => {
    unsubscribe();
    unseen.clear();
    document.getElementById("toasts")?.replaceChildren();
    changed();
  };
}
