// The sections of a module's page (#/modules/<id>) besides its configuration and log:
// its lifecycle history, a form to call one of its commands, its storage (read only) and
// the confirmation of an uninstall. Each returns {el, close}.

import { fill, formatBytes, formatClock, h } from "./dom.js";

const HISTORY_DEBOUNCE_MS = 150;

export const path = (id, ...rest) =>
  ["api/modules", encodeURIComponent(id), ...rest.map((p) => encodeURIComponent(p))].join("/");

/** "2026-12-08 14:03:07.250": a history entry may be days old. */
function formatTime(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${formatClock(ms)}`;
}

const seconds = (s) => `${Number(s).toFixed(s < 10 ? 1 : 0)} s`;

/** An entry of GET .../history in words: [what, detail]. */
function describeEntry(e) {
  const pid = e.pid != null ? `pid ${e.pid}` : null;
  const parts = (...xs) => xs.filter(Boolean).join(", ");
  switch (e.event) {
    case "installed":
      return ["Installed", e.version ? `version ${e.version}` : ""];
    case "install_failed":
      return ["Install failed", `${e.reason ?? ""}; nothing was changed`];
    case "compiling":
      return ["Compiling", "its code for this machine, before it starts"];
    case "started":
      return ["Started", parts(pid)];
    case "restarted":
      return ["Restarted by the daemon", parts(pid, e.restarts ? `restart ${e.restarts}` : null)];
    case "crashed":
      return ["Crashed", parts(pid, e.reason)];
    case "restarting":
      return ["Restarting", parts(e.delay != null ? `in ${seconds(e.delay)}` : null, e.restarts ? `restart ${e.restarts}` : null)];
    case "failed":
      return ["Failed", `${e.reason ?? ""}; not restarted again until you restart it`];
    case "stopped":
      return ["Stopped", parts(pid)];
    case "disabled":
      return ["Disabled", "kept stopped until enabled"];
    case "enabled":
      return ["Enabled", ""];
    case "restart_requested":
      return ["Restart asked for", "by an admin (the dashboard, vessel-ctl or the API)"];
    case "instance_replaced":
      return ["Trapped", `its instance was replaced: ${e.reason ?? ""}`];
    default:
      return [e.event, ""];
  }
}

const BAD = new Set(["crashed", "failed", "install_failed", "instance_replaced"]);

export function historyPanel(client, id) {
  const list = h("ol.history", { "aria-label": `History of ${id}, newest first` });
  const note = h("span.muted");
  const el = h("section.panel.history-panel", {}, h("header", {}, h("h4", {}, "History"), note), list);
  let debounce = null;

  async function load() {
    try {
      const { history } = await client.api("GET", path(id, "history"));
      note.textContent = history.length ? `${history.length} ${history.length === 1 ? "entry" : "entries"}, newest first` : "";
      fill(
        list,
        history.length
          ? history
              .slice()
              .reverse()
              .map((e) => {
                const [what, detail] = describeEntry(e);
                return h(
                  `li${BAD.has(e.event) ? ".bad" : ""}`,
                  { dataset: { event: e.event } },
                  h("time", { datetime: new Date(e.timestamp).toISOString() }, formatTime(e.timestamp)),
                  " ",
                  h("strong", {}, what),
                  detail ? " " : null,
                  detail ? h("span.detail", {}, detail) : null,
                );
              })
          : h("li.muted", {}, "Nothing recorded yet."),
      );
    } catch (err) {
      note.textContent = `cannot read the history: ${err.message}`;
    }
  }

  // Each lifecycle event of this module adds to its history: read it again.
  const unsubscribe = client.subscribe("vessel.module.*", {
    onEvent(event) {
      if (event.data?.module !== id) return;
      clearTimeout(debounce);
      debounce = setTimeout(load, HISTORY_DEBOUNCE_MS);
    },
    onSynced: () => load(), // and after a reconnect: what happened meanwhile
  });
  load();
  return {
    el,
    close() {
      unsubscribe();
      clearTimeout(debounce);
      el.remove();
    },
  };
}

/** Why `text` cannot be a call's params, or null with the parsed object. */
export function checkParams(text) {
  let value;
  try {
    value = JSON.parse(text.trim() || "{}");
  } catch (err) {
    return { problem: `The params are not valid JSON: ${err.message}` };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    const what = value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`;
    return { problem: `The params must be a JSON object, like {"key": 1}; this is ${what}.` };
  }
  return { value };
}

export function callPanel(client, id) {
  const name = h("input", { name: "command", required: true, placeholder: "command, e.g. status", spellcheck: "false", autocomplete: "off" });
  const version = h("input", { name: "version", type: "number", min: "0", value: "1", inputmode: "numeric" });
  const params = h("textarea", { name: "params", rows: 4, spellcheck: "false", placeholder: "{}" });
  params.value = "{}";
  const result = h("pre.result", { hidden: true, tabindex: "0", "aria-label": "Answer" });
  const message = h("p.note", { "aria-live": "polite", hidden: true });
  const button = h("button.primary", { type: "submit" }, "Call");
  const form = h(
    "form.call",
    { autocomplete: "off", novalidate: true }, // checked below, with words to act on
    h("div.call-head", {}, h("label", {}, "Command", name), h("label.version", {}, "Version", version)),
    h("label", {}, "Params (a JSON object)", params),
    h("div.actions", {}, button),
    message,
    result,
  );
  function say(text, bad = false) {
    message.hidden = false;
    message.className = bad ? "alert" : "note";
    message.textContent = text;
  }
  params.addEventListener("input", () => {
    const { problem } = checkParams(params.value);
    params.toggleAttribute("aria-invalid", Boolean(problem));
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const { value, problem } = checkParams(params.value);
    result.hidden = true;
    const command = name.value.trim();
    if (!command) {
      say("Name the command to call (the module's documentation lists them).", true);
      name.focus();
      return;
    }
    if (problem) {
      say(problem, true); // checked here: nothing is sent
      params.focus();
      return;
    }
    button.disabled = true;
    say(`Calling ${id}.${command}…`);
    const started = performance.now();
    try {
      const body = await client.api("POST", `${path(id, "call", command)}?version=${encodeURIComponent(version.value || "1")}`, { json: value });
      const ms = Math.round(performance.now() - started);
      say(`${command} answered in ${ms} ms:`);
      result.textContent = JSON.stringify(body.data, null, 2);
      result.hidden = false;
    } catch (err) {
      say(`${command} failed (${err.code}): ${err.message}`, true);
    } finally {
      button.disabled = false;
    }
  });
  const el = h(
    "section.panel.call-panel",
    {},
    h("header", {}, h("h4", {}, "Call a command")),
    h("p.muted", {}, "What a dashboard or another module would send; the answer is the module's JSON."),
    form,
  );
  return { el, close: () => el.remove() };
}

export function storagePanel(client, id) {
  const list = h("ul.keys.storage-keys");
  const summary = h("span.muted");
  const body = h(
    "div",
    {},
    h(
      "p.muted",
      {},
      "What the module keeps for itself (a counter, a cache, a session). Read only here: what the keys mean is the module's business. Uninstalling without keeping its storage deletes them.",
    ),
    list,
  );
  const details = h("details.storage", {}, h("summary", {}, h("h4", {}, "Storage"), " ", summary), body);
  const el = h("section.panel.storage-panel", {}, details);

  async function load() {
    try {
      const { keys, used, quota } = await client.api("GET", path(id, "storage"));
      summary.textContent = `${keys.length} key${keys.length === 1 ? "" : "s"} · ${formatBytes(used)} of ${formatBytes(quota)} used`;
      fill(list, keys.length ? keys.map(row) : h("li.muted", {}, "The module keeps nothing in its storage."));
    } catch (err) {
      summary.textContent = `cannot list it: ${err.message}`;
    }
  }

  function row({ key, size }) {
    const value = h("output.value", { hidden: true });
    const show = h("button.small", { type: "button" }, "Show value");
    show.addEventListener("click", async () => {
      if (!value.hidden) {
        value.hidden = true;
        value.textContent = "";
        show.textContent = "Show value";
        return;
      }
      try {
        value.textContent = (await client.api("GET", path(id, "storage", key))).value;
      } catch (err) {
        value.textContent = `cannot read it: ${err.message}`;
      }
      value.hidden = false;
      show.textContent = "Hide";
    });
    return h("li", { dataset: { key } }, h("code", {}, key), h("span.muted", {}, formatBytes(size)), h("span.spacer"), show, value);
  }
  details.addEventListener("toggle", () => {
    if (details.open) load();
  });
  load();
  return { el, close: () => el.remove() };
}

/** The egress audit (GET .../egress): where the module's http-fetch and websockets went
 * since its process started, and what network.hosts denied, per destination. */
export function egressPanel(client, id) {
  const list = h("ul.keys.egress");
  const summary = h("span.muted");
  const details = h(
    "details.egress",
    {},
    h("summary", {}, h("h4", {}, "Network use"), " ", summary),
    h("div", {}, h("p.muted", {}, "Where the module connected since it last started, and what it was denied (its manifest's network.hosts)."), list),
  );
  const el = h("section.panel.egress-panel", {}, details);
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

  async function load() {
    try {
      const { running, destinations } = await client.api("GET", path(id, "egress"));
      const denied = destinations.reduce((sum, d) => sum + d.denied, 0);
      summary.textContent = !running
        ? "not running"
        : `${plural(destinations.length, "destination")}${denied ? ` · ${denied} denied` : ""}`;
      fill(list, destinations.length ? destinations.map(row) : h("li.muted", {}, "Nothing sent since it started."));
    } catch (err) {
      summary.textContent = `cannot read it: ${err.message}`;
    }
  }

  function row(d) {
    const parts = [];
    if (d.requests) parts.push(plural(d.requests, "request"));
    if (d.connections) parts.push(plural(d.connections, "connection"));
    if (d.last_used != null) parts.push(`${formatBytes(d.bytes_sent)} sent`, `${formatBytes(d.bytes_received)} received`);
    if (d.denied) parts.push(`${plural(d.denied, "attempt")} denied`);
    const item = h("li", { dataset: { destination: d.destination } }, h("code", {}, d.destination), h("span.muted", {}, parts.join(", ")));
    if (d.denied) item.classList.add("denied");
    return item;
  }
  details.addEventListener("toggle", () => {
    if (details.open) load();
  });
  load();
  return { el, close: () => el.remove() };
}

/** The uninstall confirmation: it names the module and says what goes. */
export function uninstallBox(client, info, done) {
  const keep = h("input", { type: "checkbox", name: "keep_storage" });
  const message = h("p.note", { "aria-live": "polite", hidden: true });
  const confirm = h("button.danger", { type: "submit" }, `Uninstall ${info.id}`);
  const cancel = h("button", { type: "button" }, "Cancel");
  const form = h(
    "form.confirm",
    { role: "alertdialog", "aria-label": `Uninstall ${info.id}?` },
    h("p", {}, h("strong", {}, `Uninstall ${info.name || info.id} (${info.id})?`), " Its process is stopped and its folder deleted, with its history."),
    h("label.check", {}, keep, "Keep its configuration and storage, for a later install of the same id"),
    h("div.actions", {}, confirm, cancel),
    message,
  );
  cancel.addEventListener("click", () => done(null));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    confirm.disabled = true;
    message.hidden = false;
    message.className = "note";
    message.textContent = `Uninstalling ${info.id}…`;
    try {
      await client.api("DELETE", `${path(info.id)}${keep.checked ? "?keep_storage=true" : ""}`);
      done(keep.checked ? `Uninstalled ${info.id}; its configuration and storage are kept.` : `Uninstalled ${info.id}.`);
    } catch (err) {
      message.className = "alert";
      message.textContent = `Cannot uninstall ${info.id}: ${err.message}`;
      confirm.disabled = false;
    }
  });
  return form;
}
