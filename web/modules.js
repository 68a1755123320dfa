// Modules: every installed module (GET api/modules) with its live figures, refetched
// when a `vessel.module.*` lifecycle event arrives (and every 10 s for memory); restart,
// enable and disable; install from an upload; each module's configuration (keys only:
// values are write-only unless the user asks to read one) and its followed log.

import { fill, formatBytes, formatClock, formatDuration, h, withCode } from "./dom.js";

export const title = "Modules";

const REFRESH_MS = 10000;
const LIFECYCLE_DEBOUNCE_MS = 150;
const LOG_LINES = 200;
const FOLLOW_MS = 1000; // how often a followed install is asked about
const SECRET_KEY = /token|password|secret|key/i;

const path = (id, ...rest) =>
  ["api/modules", encodeURIComponent(id), ...rest.map((p) => encodeURIComponent(p))].join("/");

export function mount(root, client, route) {
  const cards = new Map(); // id -> card controller
  const list = h("div.modules");
  const refusedBox = h("section.refused", { hidden: true });
  const installsBox = h("section.installs", { hidden: true, "aria-live": "polite" });
  const listError = h("p.alert", { role: "alert", hidden: true });
  const install = installForm(client, () => refresh());
  let fetchedAt = performance.now();
  let debounce = null;
  let inFlight = null;

  root.append(
    h(
      "div.toolbar",
      {},
      h("h2", {}, "Modules"),
      h("span.spacer"),
      h("button", { type: "button", onclick: () => refresh() }, "Refresh"),
      h(
        "button.primary",
        {
          type: "button",
          onclick: () => {
            install.hidden = !install.hidden;
            if (!install.hidden) install.querySelector("input").focus();
          },
        },
        "Install…",
      ),
    ),
    install,
    listError,
    installsBox,
    list,
    refusedBox,
  );

  async function refresh() {
    if (inFlight) return inFlight;
    inFlight = (async () => {
      try {
        const body = await client.api("GET", "api/modules");
        fetchedAt = performance.now();
        listError.hidden = true;
        render(body);
      } catch (err) {
        listError.hidden = false;
        listError.textContent = `Cannot list the modules: ${err.message}`;
      } finally {
        inFlight = null;
      }
    })();
    return inFlight;
  }

  let openFirst = route.arg; // "#/modules/<id>": open that module's configuration

  function render(body) {
    const ids = new Set(body.modules.map((info) => info.id));
    for (const [id, card] of cards) {
      if (!ids.has(id)) {
        card.close();
        card.el.remove();
        cards.delete(id);
      }
    }
    list.querySelector(":scope > .empty")?.remove();
    body.modules.forEach((info, i) => {
      let card = cards.get(info.id);
      if (!card) {
        card = moduleCard(client, info, () => refresh());
        cards.set(info.id, card);
      }
      card.update(info);
      // The daemon's order (by id). Move a card only when it is out of place: moving
      // a node would take the focus away from a field the user is typing in.
      const at = list.children[i];
      if (at !== card.el) list.insertBefore(card.el, at ?? null);
      if (openFirst === info.id) {
        openFirst = null;
        card.open("config");
      }
    });
    if (body.modules.length === 0) {
      list.append(h("p.card.empty", {}, "No modules installed. Install one with the button above."));
    }
    // Installs the daemon is compiling or starting, and those that failed lately (a
    // finished one is a module card now).
    const installs = (body.installing ?? []).filter((i) => i.state !== "installed");
    installsBox.hidden = installs.length === 0;
    fill(
      installsBox,
      h("h3", {}, "Installing"),
      installs.map((i) =>
        h(
          `p.card.install-status${i.state === "failed" ? ".alert" : ""}`,
          { dataset: { install: i.id, state: i.state } },
          h("strong", {}, `${i.id} ${i.version}`),
          `: ${describeInstall(i)}`,
        ),
      ),
    );
    refusedBox.hidden = body.refused.length === 0;
    fill(
      refusedBox,
      h("h3", {}, `Refused (${body.refused.length}): fix the module folder, then install it again with "replace"`),
      body.refused.map((r) => h("p.card", {}, h("strong", {}, r.id), ": ", r.reason)),
    );
  }

  const unsubscribe = client.subscribe("vessel.module.*", {
    onEvent() {
      clearTimeout(debounce);
      debounce = setTimeout(refresh, LIFECYCLE_DEBOUNCE_MS);
    },
    onSynced: () => refresh(), // first subscribe, and after every reconnect
  });
  refresh();
  const poll = setInterval(refresh, REFRESH_MS);
  const clock = setInterval(() => {
    const elapsed = (performance.now() - fetchedAt) / 1000;
    for (const card of cards.values()) card.tick(elapsed);
  }, 1000);

  return () => {
    unsubscribe();
    clearTimeout(debounce);
    clearInterval(poll);
    clearInterval(clock);
    for (const card of cards.values()) card.close();
  };
}

function installForm(client, done) {
  const message = h("p.note", { "aria-live": "polite" });
  const form = h(
    "form.card.install",
    { hidden: true },
    h("h3", {}, "Install a module"),
    h("label", {}, "Component (.wasm)", h("input", { type: "file", name: "wasm", accept: ".wasm,application/wasm", required: true })),
    h("label", {}, "Manifest (manifest.json)", h("input", { type: "file", name: "manifest", accept: ".json,application/json", required: true })),
    h("label.check", {}, h("input", { type: "checkbox", name: "replace" }), "Replace an installed module with the same id"),
    h("div.actions", {}, h("button.primary", { type: "submit" }, "Install")),
    message,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const replace = form.elements.replace.checked;
    const manifestFile = form.elements.manifest.files[0];
    const data = new FormData();
    data.append("manifest", manifestFile); // first: the daemon checks it before the rest
    data.append("wasm", form.elements.wasm.files[0]);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    message.className = "note";
    try {
      // A duplicate id is refused before megabytes are uploaded.
      const id = await manifestId(manifestFile);
      if (id && !replace && (await installed(client, id))) {
        throw { code: "already_installed", message: `module ${id} is already installed; tick "Replace" to replace it` };
      }
      message.textContent = "Uploading…";
      let status = await client.api("POST", `api/modules?wait=false${replace ? "&replace=true" : ""}`, { form: data });
      form.elements.wasm.value = "";
      form.elements.manifest.value = "";
      done();
      // The daemon compiles it now (seconds to minutes at a low priority): say how it goes.
      while (status.state === "compiling" || status.state === "starting") {
        message.textContent = `${status.id} ${status.version}: ${describeInstall(status)}`;
        await new Promise((resolve) => setTimeout(resolve, FOLLOW_MS));
        status = await client.api("GET", path(status.id, "install"));
      }
      if (status.state === "failed") throw { code: "install_failed", message: status.reason };
      const info = await client.api("GET", path(status.id));
      message.textContent = `Installed ${info.id} ${info.version}: ${info.state}${info.pid ? `, pid ${info.pid}` : ""}`;
      done();
    } catch (err) {
      message.className = "alert";
      // The API's words name its query parameter; the page has a checkbox for it.
      const text =
        err.code === "already_installed" ? `${err.message.split(";")[0]}; tick "Replace" to replace it` : err.message;
      message.textContent = `Install failed (${err.code}): ${text}`;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/** The id in a manifest file, or null when it cannot be read (the daemon says why). */
async function manifestId(file) {
  try {
    const doc = JSON.parse(await file.text());
    return typeof doc?.id === "string" ? doc.id : null;
  } catch {
    return null;
  }
}

async function installed(client, id) {
  try {
    await client.api("GET", path(id));
    return true;
  } catch (err) {
    if (err.code === "unknown_module") return false;
    throw err;
  }
}

/** "compiling, 12 s so far" / "failed: <reason>": an install record in words. */
function describeInstall(install) {
  if (install.state === "failed") return `failed: ${install.reason}`;
  if (install.state === "compiling") return `compiling, ${Math.round(install.elapsed)} s so far (at a low priority, one or a few at a time)`;
  if (install.state === "starting") return "compiled; starting";
  return install.state;
}

function moduleCard(client, first, changed) {
  let info = first;
  const field = (name) => h("dd", { dataset: { field: name } });
  const facts = { pid: field("pid"), restarts: field("restarts"), uptime: field("uptime"), memory: field("memory") };
  const state = h("span.badge");
  const heading = h("h3");
  const meta = h("p.muted");
  const reason = h("p.reason", { hidden: true });
  const health = h("p.health", { hidden: true }); // the module's own word (docs/modules.md)
  const needs = h("p.alert.needs", { hidden: true });
  const message = h("p.note", { "aria-live": "polite", hidden: true });
  const restartButton = h("button", { type: "button", dataset: { action: "restart" } }, "Restart");
  const enableButton = h("button", { type: "button", dataset: { action: "enable" } });
  const logsButton = h("button", { type: "button", "aria-expanded": "false", dataset: { action: "logs" } }, "Logs");
  const configButton = h("button", { type: "button", "aria-expanded": "false", dataset: { action: "config" } }, "Configure");
  const panels = { logs: null, config: null };

  const el = h(
    "article.card.module",
    { dataset: { module: first.id } },
    h("header", {}, heading, state),
    meta,
    h(
      "dl.facts",
      {},
      h("div", {}, h("dt", {}, "PID"), facts.pid),
      h("div", {}, h("dt", {}, "Restarts"), facts.restarts),
      h("div", {}, h("dt", {}, "Uptime"), facts.uptime),
      h("div", {}, h("dt", {}, "Memory"), facts.memory),
    ),
    reason,
    health,
    needs,
    h("div.actions", {}, restartButton, enableButton, logsButton, configButton),
    message,
  );

  async function act(action, button) {
    button.disabled = true;
    message.hidden = false;
    message.className = "note";
    message.textContent = { restart: "Restarting…", enable: "Enabling…", disable: "Disabling…" }[action];
    try {
      const before = info.pid;
      info = await client.api("POST", path(info.id, action));
      update(info);
      message.textContent =
        action === "restart"
          ? `Restarted: pid ${before ?? "–"} → ${info.pid ?? "–"}`
          : action === "enable"
            ? `Enabled: ${info.state}${info.pid ? `, pid ${info.pid}` : ""}`
            : "Disabled: stopped, and kept stopped across restarts";
      changed();
    } catch (err) {
      message.className = "alert";
      message.textContent = `${action} failed: ${err.message}`;
    } finally {
      button.disabled = false;
      update(info);
    }
  }
  restartButton.addEventListener("click", () => act("restart", restartButton));
  enableButton.addEventListener("click", () => act(info.enabled ? "disable" : "enable", enableButton));

  function toggle(which) {
    if (panels[which]) {
      panels[which].close();
      panels[which] = null;
    } else {
      panels[which] = (which === "logs" ? logPanel : configPanel)(client, info.id);
      el.insertBefore(panels[which].el, message);
    }
    logsButton.setAttribute("aria-expanded", String(Boolean(panels.logs)));
    configButton.setAttribute("aria-expanded", String(Boolean(panels.config)));
  }
  logsButton.addEventListener("click", () => toggle("logs"));
  configButton.addEventListener("click", () => toggle("config"));

  let baseUptime = null;
  // "compiling · 12s": how long its compile has waited or run, counted on between fetches.
  const stateText = (elapsed) =>
    info.state === "compiling" && info.compiling_for != null
      ? `compiling · ${formatDuration(info.compiling_for + elapsed)}`
      : info.state;
  function update(next) {
    info = next;
    heading.textContent = info.name || info.id;
    state.textContent = stateText(0);
    state.dataset.state = info.state;
    meta.textContent = `${info.id} · ${info.version}${info.description ? ` — ${info.description}` : ""}`;
    facts.pid.textContent = info.pid ?? "–";
    facts.restarts.textContent = String(info.restarts);
    facts.memory.textContent = formatBytes(info.memory);
    baseUptime = info.uptime;
    facts.uptime.textContent = formatDuration(info.uptime);
    reason.hidden = !info.last_reason || info.state === "running";
    reason.textContent = info.last_reason ? `Last stop: ${info.last_reason}` : "";
    health.hidden = !info.health;
    health.dataset.health = info.health?.status ?? "";
    // A command in the module's message shows as code, as on the Home tile.
    const said = info.health?.message ? [" — ", ...withCode(info.health.message)] : [];
    fill(health, ...(info.health ? [`Health: ${info.health.status}`, ...said] : []));
    const missing = info.missing_settings ?? [];
    needs.hidden = !missing.length;
    needs.textContent = missing.length ? `Needs configuration: ${missing.join(", ")}` : "";
    enableButton.textContent = info.enabled ? "Disable" : "Enable";
    restartButton.disabled = !info.enabled;
    restartButton.title = info.enabled ? "" : "A disabled module is not restarted: enable it";
  }

  return {
    el,
    update,
    tick(elapsed) {
      state.textContent = stateText(elapsed);
      if (baseUptime !== null && baseUptime !== undefined) {
        facts.uptime.textContent = formatDuration(baseUptime + elapsed);
      }
    },
    open(which) {
      if (!panels[which]) toggle(which);
      el.scrollIntoView({ block: "start" });
    },
    close() {
      for (const p of Object.values(panels)) p?.close();
    },
  };
}

function logPanel(client, id) {
  const pre = h("pre.log", { tabindex: "0", "aria-label": `Log of ${id}` });
  const note = h("span.muted");
  const el = h("section.panel", {}, h("header", {}, h("h4", {}, "Log"), note, h("span.spacer"), h("button", { type: "button", onclick: () => start() }, "Reload")), pre);
  let controller = null;
  const lines = [];

  function show(line) {
    lines.push(`${formatClock(line.timestamp)} ${line.level.toUpperCase().padEnd(7)} ${line.source}: ${line.message}`);
    if (lines.length > LOG_LINES) lines.splice(0, lines.length - LOG_LINES);
  }

  let scheduled = false;
  function paint() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.textContent = lines.join("\n") || "(no log lines yet)";
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    });
  }

  async function start() {
    controller?.abort();
    controller = new AbortController();
    const mine = controller;
    lines.length = 0;
    note.textContent = "following";
    paint();
    try {
      const res = await client.stream(`${path(id, "logs")}?lines=${LOG_LINES}&follow=true`, mine.signal);
      if (!res.ok) throw new Error(`${res.status} ${(await res.json().catch(() => ({}))).message ?? ""}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const text = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (text) show(JSON.parse(text));
        }
        paint();
      }
      if (mine === controller) note.textContent = "stream ended (daemon stopped?): Reload";
    } catch (err) {
      if (mine === controller && err.name !== "AbortError") note.textContent = `cannot read the log: ${err.message}`;
    }
  }
  start();
  return {
    el,
    close() {
      controller?.abort();
      controller = null;
      el.remove();
    },
  };
}

/** "set", "default: …", "required, not set" or "not set", for a declared setting. */
function settingState(s) {
  if (s.set) return "(set)";
  if (s.default != null) return `(default: ${s.default})`;
  return s.required ? "(required, not set)" : "(not set)";
}

function configPanel(client, id) {
  const keysList = h("ul.keys");
  const message = h("p.note", { "aria-live": "polite", hidden: true });
  // The settings the module's manifest declares become a form (filled in once they are
  // known); a module that declares none takes any key=value.
  const settingsBox = h("div.settings-box");
  const generic = h("div.generic");
  let formShown = false;

  function say(text, bad = false) {
    message.hidden = false;
    message.className = bad ? "alert" : "note";
    message.textContent = text;
  }

  async function loadKeys() {
    try {
      const { keys, settings = [] } = await client.api("GET", path(id, "config"));
      fill(keysList, keys.length ? keys.map(keyRow) : h("li.muted", {}, "No keys set."));
      if (!formShown) {
        formShown = true;
        if (settings.length) fill(settingsBox, settingsForm(settings));
        fill(generic, settings.length ? [] : keyValueForm());
      }
      for (const s of settings) {
        const state = settingsBox.querySelector(`[data-setting="${CSS.escape(s.key)}"] .state`);
        if (state) state.textContent = settingState(s);
      }
    } catch (err) {
      say(`Cannot list the keys: ${err.message}`, true);
    }
  }

  function keyRow(key) {
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
        const body = await client.api("GET", path(id, "config", key));
        value.textContent = body.value;
        value.hidden = false;
        show.textContent = "Hide";
      } catch (err) {
        say(`Cannot read ${key}: ${err.message}`, true);
      }
    });
    const remove = h("button.small.danger", { type: "button" }, "Delete");
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Delete ${id} configuration key "${key}"?`)) return;
      try {
        await client.api("DELETE", path(id, "config", key));
        say(`Deleted ${key}.`);
        loadKeys();
      } catch (err) {
        say(`Cannot delete ${key}: ${err.message}`, true);
      }
    });
    return h("li", { dataset: { key } }, h("code", {}, key), h("span.spacer"), show, remove, value);
  }

  async function put(key, value) {
    await client.api("PUT", path(id, "config", key), { json: { value } });
  }

  function settingsForm(settings) {
    const field = (s) => {
      const input = h("input", {
        name: s.key,
        type: s.secret ? "password" : "text",
        placeholder: s.set ? "unchanged" : (s.default ?? ""),
        autocomplete: s.secret ? "new-password" : "off",
        spellcheck: "false",
      });
      return h(
        "div.setting",
        { dataset: { setting: s.key } },
        h("label", {}, h("span.label", {}, s.label, " ", h("span.state.muted", {}, settingState(s))), input),
        s.description ? h("small.muted", {}, s.description) : null,
      );
    };
    const form = h(
      "form.settings",
      { autocomplete: "off" },
      settings.map(field),
      h("div.actions", {}, h("button.primary", { type: "submit" }, "Save settings")),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const changed = settings.filter((s) => form.elements[s.key].value.trim() !== "");
      if (!changed.length) {
        say("Nothing to save: fill in the fields to change (empty fields are left as they are).");
        return;
      }
      try {
        for (const s of changed) await put(s.key, form.elements[s.key].value.trim());
        for (const s of changed) {
          form.elements[s.key].value = "";
          form.elements[s.key].placeholder = "unchanged";
        }
        say(`Saved ${changed.map((s) => s.key).join(" and ")}. The module is told and applies them.`);
        loadKeys();
      } catch (err) {
        say(`Cannot save: ${err.message}`, true);
      }
    });
    return form;
  }

  function keyValueForm() {
    const keyInput = h("input", { name: "key", required: true, placeholder: "key", spellcheck: "false", autocomplete: "off" });
    const valueInput = h("input", { name: "value", placeholder: "value", spellcheck: "false", autocomplete: "off" });
    keyInput.addEventListener("input", () => {
      valueInput.type = SECRET_KEY.test(keyInput.value) ? "password" : "text";
    });
    const form = h(
      "form.keyvalue",
      { autocomplete: "off" },
      h("label", {}, "Key", keyInput),
      h("label", {}, "Value", valueInput),
      h("div.actions", {}, h("button", { type: "submit" }, "Set")),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await put(keyInput.value, valueInput.value);
        say(`Set ${keyInput.value}.`);
        keyInput.value = "";
        valueInput.value = "";
        valueInput.type = "text";
        loadKeys();
      } catch (err) {
        say(`Cannot set ${keyInput.value}: ${err.message}`, true);
      }
    });
    return form;
  }

  const el = h(
    "section.panel.config",
    {},
    h("header", {}, h("h4", {}, "Configuration")),
    h("p.muted", {}, "Values are write-only here: they may hold secrets, so they are shown only when you ask."),
    settingsBox,
    keysList,
    generic,
    message,
  );
  loadKeys();
  return { el, close: () => el.remove() };
}
