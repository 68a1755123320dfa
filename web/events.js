// Events: the live stream of events matching a glob ("module.name", e.g.
// "home-assistant.*"), newest first, at most MAX_EVENTS kept. The filter is the
// subscription itself (the daemon sends only what matches) and also hides what was
// received under an earlier filter. Retained state replayed by a subscribe is tagged.
// Pause holds new events (bounded too) until resume.

import { formatClock, globRegExp, h } from "./dom.js";

export const title = "Events";

const MAX_EVENTS = 500;
const FILTER_DEBOUNCE_MS = 300;
const DEFAULT_FILTER = "*.*";

export function mount(root, client, route) {
  const events = []; // oldest first: {key, ts, el}
  const held = [];
  let paused = false;
  let pattern = route.query.get("filter") || DEFAULT_FILTER;
  let regexp = globRegExp(pattern);
  let unsubscribe = () => {};
  let debounce = null;

  const filter = h("input", {
    type: "search",
    name: "filter",
    value: pattern,
    placeholder: "module.name glob, e.g. home-assistant.*",
    spellcheck: "false",
    autocomplete: "off",
    "aria-label": "Filter (module.name glob)",
  });
  const pauseButton = h("button", { type: "button", dataset: { action: "pause" } }, "Pause");
  const count = h("span.muted.count", { "aria-live": "polite" });
  const stream = h("ol.stream", { "aria-label": "Events, newest first" });
  const empty = h("p.muted.empty", {}, "Waiting for events…");
  root.append(
    h(
      "form.toolbar",
      { onsubmit: (e) => (e.preventDefault(), apply()) },
      h("h2", {}, "Events"),
      filter,
      pauseButton,
      h("button", { type: "button", dataset: { action: "clear" }, onclick: clear }, "Clear"),
      count,
    ),
    empty,
    stream,
  );

  function renderCount() {
    const shown = stream.children.length;
    count.textContent = `${shown} shown${held.length ? `, ${held.length} held` : ""}`;
    empty.hidden = shown > 0;
    empty.textContent = paused ? "Paused." : `Waiting for events matching ${pattern}…`;
    pauseButton.textContent = paused ? `Resume${held.length ? ` (${held.length} new)` : ""}` : "Pause";
    pauseButton.setAttribute("aria-pressed", String(paused));
  }

  function item(event, replayed) {
    return h(
      "li.event",
      { dataset: { key: `${event.module}.${event.name}` } },
      h(
        "div.event-head",
        {},
        h("time", { datetime: new Date(event.timestamp).toISOString() }, formatClock(event.timestamp)),
        h("code.key", {}, `${event.module}.${event.name}`),
        event.version !== 1 && h("span.tag", {}, `v${event.version}`),
        replayed && h("span.tag", { title: "Current state, replayed when subscribing" }, "retained"),
      ),
      h("pre.payload", {}, JSON.stringify(event.data, null, 2)),
    );
  }

  function add(entry) {
    events.push(entry);
    if (events.length > MAX_EVENTS) events.shift().el?.remove();
    if (regexp.test(entry.el.dataset.key)) stream.prepend(entry.el);
  }

  function receive(event, replayed) {
    const key = `${event.module}.${event.name}`;
    // A subscribe replays retained state; after a filter change the same retained event
    // may already be in the list (received under the earlier filter): it is not new.
    if (replayed && [...events, ...held].some((e) => e.key === key && e.ts === event.timestamp)) return;
    const entry = { key, ts: event.timestamp, el: item(event, replayed) };
    if (paused) {
      held.push(entry);
      if (held.length > MAX_EVENTS) held.shift();
    } else {
      add(entry);
    }
    renderCount();
  }

  function subscribe() {
    unsubscribe();
    unsubscribe = client.subscribe(pattern, { onEvent: receive, onError: (err) => {
      count.textContent = `filter refused: ${err.message}`;
    } });
  }

  function apply() {
    clearTimeout(debounce);
    const next = filter.value.trim() || DEFAULT_FILTER;
    if (next === pattern) return;
    pattern = next;
    regexp = globRegExp(pattern);
    const query = pattern === DEFAULT_FILTER ? "" : `?filter=${encodeURIComponent(pattern)}`;
    history.replaceState(null, "", `#/events${query}`);
    // Show only what matches; what was received before stays in memory (bounded).
    stream.replaceChildren(...events.filter((e) => regexp.test(e.el.dataset.key)).map((e) => e.el).reverse());
    subscribe();
    renderCount();
  }

  function clear() {
    events.length = 0;
    held.length = 0;
    stream.replaceChildren();
    renderCount();
  }

  pauseButton.addEventListener("click", () => {
    paused = !paused;
    if (!paused) held.splice(0).forEach(add);
    renderCount();
  });
  filter.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(apply, FILTER_DEBOUNCE_MS);
  });

  subscribe();
  renderCount();
  const unmount = () => {
    clearTimeout(debounce);
    unsubscribe();
  };
  // The hash changed within this view ("#/events?filter=..." typed or linked): apply it.
  unmount.update = (next) => {
    filter.value = next.query.get("filter") || DEFAULT_FILTER;
    apply();
  };
  return unmount;
}
