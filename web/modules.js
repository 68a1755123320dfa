// Modules: every installed module (GET api/modules) with its live figures, refetched
// when a `vessel.module.*` lifecycle event arrives (and every 10 s for memory); restart,
// enable and disable; install from an upload (one pick of the folder's two files, or a
// drop); each module's configuration (its declared settings: values are write-only
// unless the user asks to read one) and its followed log.
//
// "#/modules/<id>" is the module's page: the same card with everything open (settings,
// history, a command call, its storage read only, its log) and Uninstall.

import { acknowledge, describeProblem, onChange, problem } from "./alerts.js";
import { fill, formatBytes, formatClock, formatDuration, h, withCode } from "./dom.js";
import { callPanel, egressPanel, historyPanel, path, storagePanel, uninstallBox } from "./panels.js";

export const title = "Modules";

const REFRESH_MS = 10000;
const LIFECYCLE_DEBOUNCE_MS = 150;
const LOG_LINES = 200;
const FOLLOW_MS = 1000; // how often a followed install is asked about

let flash = null; // what the list says first ("Uninstalled example."), once

export function mount(root, client, route) {
  if (route.arg) return mountPage(root, client, route.arg);
  const cards = new Map(); // id -> card controller
  const list = h("div.modules");
  const refusedBox = h("section.refused", { hidden: true });
  const installsBox = h("section.installs", { hidden: true, "aria-live": "polite" });
  const listError = h("p.alert", { role: "alert", hidden: true });
  const flashNote = h("p.note.flash", { "aria-live": "polite", hidden: !flash }, flash ?? "");
  flash = null;
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
    flashNote,
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
  const stopDrop = acceptDrops(root, install);

  return () => {
    unsubscribe();
    stopDrop();
    clearTimeout(debounce);
    clearInterval(poll);
    clearInterval(clock);
    for (const card of cards.values()) card.close();
  };
}

/** The module's page: its card with every section open, followed like the list. */
function mountPage(root, client, id) {
  const error = h("p.alert", { role: "alert", hidden: true });
  const holder = h("div.module-page");
  let card = null;
  let fetchedAt = performance.now();
  let debounce = null;
  root.append(h("div.toolbar", {}, h("a.back", { href: "#/modules" }, "← All modules")), error, holder);
  acknowledge(id); // its crash or failure is seen now

  async function refresh() {
    try {
      const info = await client.api("GET", path(id));
      fetchedAt = performance.now();
      error.hidden = true;
      if (!card) {
        card = moduleCard(client, info, refresh, { page: true });
        holder.append(card.el);
        document.title = `${info.name || info.id} · Vessel`;
      }
      card.update(info);
    } catch (err) {
      error.hidden = false;
      error.textContent =
        err.code === "unknown_module" ? `No module ${id} is installed (any more).` : `Cannot read ${id}: ${err.message}`;
    }
  }
  const unsubscribe = client.subscribe("vessel.module.*", {
    onEvent(event) {
      if (event.data?.module !== id) return;
      acknowledge(id); // shown here as it happens
      clearTimeout(debounce);
      debounce = setTimeout(refresh, LIFECYCLE_DEBOUNCE_MS);
    },
    onSynced: () => refresh(),
  });
  refresh();
  const poll = setInterval(refresh, REFRESH_MS);
  const clock = setInterval(() => card?.tick((performance.now() - fetchedAt) / 1000), 1000);
  return () => {
    unsubscribe();
    clearTimeout(debounce);
    clearInterval(poll);
    clearInterval(clock);
    card?.close();
  };
}

/** Files dropped anywhere on the view go to the install form (opened for them). */
function acceptDrops(root, install) {
  let depth = 0; // dragenter/dragleave pairs of the children
  const carriesFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  const enter = (e) => {
    if (!carriesFiles(e)) return;
    depth += 1;
    root.classList.add("dropping");
  };
  const leave = () => {
    depth = Math.max(0, depth - 1);
    if (!depth) root.classList.remove("dropping");
  };
  const over = (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault(); // else the browser opens the file
    e.dataTransfer.dropEffect = "copy";
  };
  const drop = (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    depth = 0;
    root.classList.remove("dropping");
    install.take(e.dataTransfer.files);
  };
  root.addEventListener("dragenter", enter);
  root.addEventListener("dragleave", leave);
  root.addEventListener("dragover", over);
  root.addEventListener("drop", drop);
  return () => {
    for (const [name, fn] of [["dragenter", enter], ["dragleave", leave], ["dragover", over], ["drop", drop]]) {
      root.removeEventListener(name, fn);
    }
  };
}

function installForm(client, done) {
  const message = h("p.note", { "aria-live": "polite" });
  const picker = h("input", { type: "file", name: "files", multiple: true, accept: ".wasm,.json,application/wasm,application/json" });
  const chosen = h("p.muted.chosen", { "aria-live": "polite" }, "");
  const form = h(
    "form.card.install",
    { hidden: true },
    h("h3", {}, "Install a module"),
    h("label", {}, "Module files: manifest.json and module.wasm", picker),
    h("p.muted.drop-hint", {}, "Pick both at once, or drop them here (from the module's folder; a built module's component is in build/)."),
    chosen,
    h("label.check", {}, h("input", { type: "checkbox", name: "replace" }), "Replace an installed module with the same id"),
    h("div.actions", {}, h("button.primary", { type: "submit" }, "Install")),
    message,
  );
  let files = null; // {manifest, wasm} once both are known

  function say(text, bad = false) {
    message.className = bad ? "alert" : "note";
    message.textContent = text;
  }
  /** Sort picked or dropped files into the manifest and the component, or say why not. */
  function take(list) {
    const all = [...list];
    const manifests = all.filter((f) => f.name.toLowerCase().endsWith(".json"));
    const wasms = all.filter((f) => f.name.toLowerCase().endsWith(".wasm"));
    const others = all.filter((f) => !manifests.includes(f) && !wasms.includes(f));
    files = null;
    form.hidden = false;
    fill(chosen, all.map((f) => `${f.name} (${formatBytes(f.size)})`).join(" + "));
    const problems = [];
    if (others.length) problems.push(`not a module's file: ${others.map((f) => f.name || "a folder").join(", ")}`);
    if (manifests.length !== 1) problems.push(manifests.length ? "more than one .json file" : "manifest.json is missing");
    if (wasms.length !== 1) problems.push(wasms.length ? "more than one .wasm file" : "module.wasm is missing");
    if (problems.length) {
      say(`Pick the module's two files together, manifest.json and module.wasm: ${problems.join("; ")}.`, true);
      return;
    }
    files = { manifest: manifests[0], wasm: wasms[0] };
    say("Ready: press Install.");
  }
  form.take = (list) => {
    // A drop fills the picker too, so what is shown is what is sent.
    try {
      const transfer = new DataTransfer();
      for (const f of list) transfer.items.add(f);
      picker.files = transfer.files;
    } catch {
      // an older browser: the picker keeps its own files; `files` holds the dropped ones
    }
    take(list);
  };
  picker.addEventListener("change", () => take(picker.files));

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!files) {
      if (!message.textContent || message.className !== "alert") {
        say("Pick the module's two files first: manifest.json and module.wasm.", true);
      }
      return;
    }
    const replace = form.elements.replace.checked;
    const manifestFile = files.manifest;
    const data = new FormData();
    data.append("manifest", manifestFile); // first: the daemon checks it before the rest
    data.append("wasm", files.wasm);
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
      picker.value = "";
      files = null;
      chosen.textContent = "";
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

/**
 * A module's card. In the list: its figures, Restart, Disable/Enable, and its log and
 * configuration on demand. With `page` (its own page): everything open, and Uninstall.
 */
function moduleCard(client, first, changed, { page = false } = {}) {
  let info = first;
  const field = (name) => h("dd", { dataset: { field: name } });
  const facts = { pid: field("pid"), restarts: field("restarts"), uptime: field("uptime"), memory: field("memory") };
  const state = h("span.badge");
  const name = page ? h("span") : h("a", { href: `#/modules/${encodeURIComponent(first.id)}` });
  const heading = h(page ? "h2" : "h3", {}, name);
  const meta = h("p.muted");
  const reason = h("p.reason", { hidden: true });
  const health = h("p.health", { hidden: true }); // the module's own word (docs/modules.md)
  const needs = h("p.alert.needs", { hidden: true });
  const network = h("p.network", { hidden: true }); // where it may connect (page only)
  const alertText = h("span");
  const dismiss = h("button.small", { type: "button" }, "Dismiss");
  const alertLine = h("p.alert.problem", { hidden: true }, alertText, dismiss);
  const message = h("p.note", { "aria-live": "polite", hidden: true });
  const restartButton = h("button", { type: "button", dataset: { action: "restart" } }, "Restart");
  const enableButton = h("button", { type: "button", dataset: { action: "enable" } });
  const logsButton = h("button", { type: "button", "aria-expanded": "false", dataset: { action: "logs" } }, "Logs");
  const configButton = h("button", { type: "button", "aria-expanded": "false", dataset: { action: "config" } }, "Configure");
  const uninstallButton = h("button.danger", { type: "button", dataset: { action: "uninstall" } }, "Uninstall…");
  const panels = { logs: null, config: null };
  const sections = []; // the page's other sections

  const el = h(
    `article.card.module${page ? ".page" : ""}`,
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
    network,
    alertLine,
    h(
      "div.actions",
      {},
      restartButton,
      enableButton,
      page ? null : logsButton,
      page ? null : configButton,
      page ? h("span.spacer") : null,
      page ? uninstallButton : null,
    ),
    message,
  );

  // A crash or failure the user has not looked at yet (alerts.js): said on the card.
  function showProblem() {
    const p = problem(info.id);
    alertLine.hidden = !p || page;
    alertText.textContent = p ? `${describeProblem(p)} ` : "";
  }
  dismiss.addEventListener("click", () => acknowledge(info.id));
  const stopProblems = onChange(showProblem);

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

  let confirmBox = null;
  uninstallButton.addEventListener("click", () => {
    if (confirmBox) return confirmBox.querySelector("button[type=submit]").focus();
    confirmBox = uninstallBox(client, info, (said) => {
      confirmBox.remove();
      confirmBox = null;
      if (said === null) return uninstallButton.focus(); // cancelled
      flash = said;
      location.hash = "#/modules";
    });
    el.insertBefore(confirmBox, message);
    confirmBox.querySelector("button[type=submit]").focus();
  });

  function toggle(which) {
    if (panels[which]) {
      panels[which].close();
      panels[which] = null;
    } else {
      panels[which] = (which === "logs" ? logPanel : configPanel)(client, info.id, page);
      // In the list: above the card's message. On the page: the settings first, the
      // log last, the other sections between.
      const before = !page ? message : which === "config" ? (sections[0]?.el ?? null) : null;
      el.insertBefore(panels[which].el, before);
    }
    logsButton.setAttribute("aria-expanded", String(Boolean(panels.logs)));
    configButton.setAttribute("aria-expanded", String(Boolean(panels.config)));
  }
  logsButton.addEventListener("click", () => toggle("logs"));
  configButton.addEventListener("click", () => toggle("config"));
  if (page) {
    toggle("config");
    for (const make of [historyPanel, callPanel, storagePanel, egressPanel]) sections.push(make(client, first.id));
    el.append(...sections.map((section) => section.el));
    toggle("logs");
  }

  let baseUptime = null;
  // "compiling · 12s": how long its compile has waited or run, counted on between fetches.
  const stateText = (elapsed) =>
    info.state === "compiling" && info.compiling_for != null
      ? `compiling · ${formatDuration(info.compiling_for + elapsed)}`
      : info.state;
  function update(next) {
    info = next;
    name.textContent = info.name || info.id;
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
    showNetwork(network, page ? info.permissions : undefined);
    enableButton.textContent = info.enabled ? "Disable" : "Enable";
    restartButton.disabled = !info.enabled;
    restartButton.title = info.enabled ? "" : "A disabled module is not restarted: enable it";
    showProblem();
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
    close() {
      stopProblems();
      for (const p of Object.values(panels)) p?.close();
      for (const section of sections) section.close();
    },
  };
}

/** The module's network reach in words (as `vessel-ctl info` says it), a warning when its
 * manifest names no destinations (docs/manifest.md, network.hosts). */
function showNetwork(el, permissions) {
  el.hidden = !permissions;
  if (!permissions) return;
  const net = permissions.network ?? {};
  const kinds = ["http", "websocket"].filter((k) => net[k]).join(" and ");
  const anyHost = Boolean(kinds) && net.hosts == null;
  el.classList.toggle("alert", anyHost);
  el.dataset.network = !kinds ? "none" : anyHost ? "any-host" : "hosts";
  if (!kinds) el.textContent = "Network: none";
  else if (anyHost)
    el.textContent =
      `Network: ${kinds} to any host. Its manifest lists no permissions.network.hosts, ` +
      "so it may connect anywhere.";
  else el.textContent = `Network: ${kinds} to ${net.hosts.length ? net.hosts.join(", ") : "no host"}`;
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

function configPanel(client, id, onPage = false) {
  const message = h("p.note", { "aria-live": "polite", hidden: true });
  // The settings the module's manifest declares are its configuration: a form, filled
  // in once they are known. What else its storage holds is the module's own data,
  // listed read only under Storage on its page.
  const settingsBox = h("div.settings-box");
  const secretNote = h("p.muted", { hidden: true }, "Values are write-only here: they may hold secrets, so they are shown only when you ask.");
  let formShown = false;

  function say(text, bad = false) {
    message.hidden = false;
    message.className = bad ? "alert" : "note";
    message.textContent = text;
  }

  async function load() {
    try {
      const { settings = [] } = await client.api("GET", path(id, "config"));
      if (!formShown) {
        formShown = true;
        secretNote.hidden = !settings.length;
        fill(
          settingsBox,
          settings.length
            ? settingsForm(settings)
            : h(
                "p.muted.no-settings",
                {},
                `${id} declares no settings: there is nothing to configure. What it keeps for itself is listed under Storage `,
                onPage ? "below." : h("a", { href: `#/modules/${encodeURIComponent(id)}` }, "on its page"),
                onPage ? null : ".",
              ),
        );
      }
      for (const s of settings) {
        const row = settingsBox.querySelector(`[data-setting="${CSS.escape(s.key)}"]`);
        if (!row) continue;
        row.querySelector(".state").textContent = settingState(s);
        row.dataset.set = String(s.set);
        for (const b of row.querySelectorAll(".setting-actions button")) b.hidden = !s.set;
        if (!s.set) hideValue(row);
      }
    } catch (err) {
      say(`Cannot read the settings: ${err.message}`, true);
    }
  }

  function hideValue(row) {
    const value = row.querySelector("output.value");
    value.hidden = true;
    value.textContent = "";
    row.querySelector("button[data-action=show]").textContent = "Show value";
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
      const value = h("output.value", { hidden: true });
      const show = h("button.small", { type: "button", hidden: !s.set, dataset: { action: "show" } }, "Show value");
      const clear = h("button.small.danger", { type: "button", hidden: !s.set, dataset: { action: "clear" } }, "Clear");
      const row = h(
        "div.setting",
        { dataset: { setting: s.key, set: String(s.set) } },
        h("label", {}, h("span.label", {}, s.label, " ", h("span.state.muted", {}, settingState(s))), input),
        s.description ? h("small.muted", {}, s.description) : null,
        h("div.setting-actions", {}, show, clear),
        value,
      );
      show.addEventListener("click", async () => {
        if (!value.hidden) return hideValue(row);
        try {
          value.textContent = (await client.api("GET", path(id, "config", s.key))).value;
          value.hidden = false;
          show.textContent = "Hide";
        } catch (err) {
          say(`Cannot read ${s.label}: ${err.message}`, true);
        }
      });
      clear.addEventListener("click", async () => {
        const then = s.default != null ? `it is then ${s.default} (its default)` : s.required ? "the module cannot work without it" : "it is then not set";
        if (!window.confirm(`Clear the setting "${s.label}" of ${id}? ${then[0].toUpperCase()}${then.slice(1)}.`)) return;
        try {
          await client.api("DELETE", path(id, "config", s.key));
          say(`Cleared ${s.key}. The module is told and applies it.`);
          load();
        } catch (err) {
          say(`Cannot clear ${s.key}: ${err.message}`, true);
        }
      });
      return row;
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
        load();
      } catch (err) {
        say(`Cannot save: ${err.message}`, true);
      }
    });
    return form;
  }

  const el = h(
    "section.panel.config",
    {},
    h("header", {}, h("h4", {}, "Configuration")),
    secretNote,
    settingsBox,
    message,
  );
  load();
  return { el, close: () => el.remove() };
}
