// Home: live tiles built from retained state.
//
// One subscription, "*.*": the retained events replayed before its acknowledgement are
// the current state. Home Assistant's `state.<entity_id>` events become entity tiles
// grouped by domain (lights, switches and input_booleans toggle with one click), its
// `status` the connection tile; other modules' retained events (example.tick) get a
// small tile each, updated by their live events.

import { fill, h, withCode } from "./dom.js";

export const title = "Home";

const HA = "home-assistant";
const TOGGLE_DOMAINS = new Set(["light", "switch", "input_boolean"]);
const DOMAIN_ORDER = ["light", "switch", "input_boolean"];
const DOMAIN_LABELS = {
  light: "Lights",
  switch: "Switches",
  input_boolean: "Toggles",
  sensor: "Sensors",
  binary_sensor: "Binary sensors",
  climate: "Climate",
  cover: "Covers",
  media_player: "Media players",
  person: "People",
  sun: "Sun",
  weather: "Weather",
};
/** How long a toggled tile stays pending without a state event after HA answered. */
const SETTLE_MS = 5000;

const STATUS_TEXT = {
  connected: "Connected",
  disconnected: "Disconnected",
  connecting: "Connecting",
  authenticating: "Logging in",
  unconfigured: "Not configured",
  auth_invalid: "Token refused",
  starting: "Starting",
};

function domainLabel(domain) {
  return DOMAIN_LABELS[domain] ?? domain.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function domainRank(domain) {
  const i = DOMAIN_ORDER.indexOf(domain);
  return i < 0 ? DOMAIN_ORDER.length : i;
}

/** "count 42" for small flat objects, else compact JSON (cut at 80 characters). */
function summarize(data) {
  if (data !== null && typeof data === "object" && !Array.isArray(data)) {
    const entries = Object.entries(data);
    if (entries.length <= 3 && entries.every(([, v]) => v === null || typeof v !== "object")) {
      return entries.map(([k, v]) => `${k} ${v}`).join(" · ") || "{}";
    }
  }
  const text = JSON.stringify(data);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

export function mount(root, client) {
  const entities = new Map(); // entity_id -> {id, domain, data, tile, pending, error, timer}
  const others = new Map(); // "module.name" -> tile
  const domains = new Map(); // domain -> {section, grid}
  let synced = false;

  const haTile = h("div.tile.status-tile", { dataset: { kind: "ha-status" } });
  const othersRow = h("div.grid.small");
  const domainsBox = h("div.domains");
  const empty = h("p.card.empty", { hidden: true });
  const loading = h("p.muted", {}, "Loading the current state…");
  root.append(
    h("section.overview", { "aria-label": "Status" }, h("div.grid.small", {}, haTile), othersRow),
    loading,
    empty,
    domainsBox,
  );
  renderHaStatus(null);

  function renderHaStatus(status) {
    const state = status?.state ?? (synced ? "absent" : "loading");
    haTile.dataset.state = state;
    let detail = status?.message ?? "";
    if (state === "connected" && status.ha_version) detail = `Home Assistant ${status.ha_version}`;
    if (state === "absent") detail = "The home-assistant module is not installed or not running.";
    fill(
      haTile,
      h("span.tile-label", {}, "Home Assistant"),
      h("span.tile-value", {}, h("span.dot"), STATUS_TEXT[state] ?? (state === "absent" ? "Not running" : state)),
      detail && h("span.tile-detail", {}, withCode(detail)),
      state !== "connected" && state !== "loading" && h("a.tile-link", { href: `#/modules/${HA}` }, "Configure"),
    );
  }

  function renderEmpty() {
    empty.hidden = !synced || entities.size > 0;
    loading.hidden = synced;
    fill(
      empty,
      "No Home Assistant entities yet. ",
      h("a", { href: `#/modules/${HA}` }, "Configure the home-assistant module"),
      " with your Home Assistant's URL and an access token.",
    );
  }

  function domainGrid(domain) {
    let entry = domains.get(domain);
    if (!entry) {
      const grid = h("div.grid");
      const section = h(
        "section.domain",
        { dataset: { domain } },
        h("h2", {}, domainLabel(domain)),
        grid,
      );
      entry = { section, grid };
      domains.set(domain, entry);
      const after = [...domains.keys()]
        .filter((d) => d !== domain)
        .sort((a, b) => domainRank(a) - domainRank(b) || a.localeCompare(b))
        .find((d) => domainRank(d) > domainRank(domain) || (domainRank(d) === domainRank(domain) && d > domain));
      domainsBox.insertBefore(section, after ? domains.get(after).section : null);
    }
    return entry.grid;
  }

  function nameOf(ent) {
    return ent.data?.attributes?.friendly_name || ent.id;
  }

  function renderEntity(ent) {
    const data = ent.data;
    const unit = data.attributes?.unit_of_measurement;
    const toggles = TOGGLE_DOMAINS.has(ent.domain);
    const unavailable = data.state === "unavailable" || data.state === "unknown";
    ent.tile.dataset.state = data.state;
    ent.tile.classList.toggle("on", data.state === "on");
    ent.tile.classList.toggle("pending", ent.pending);
    ent.tile.classList.toggle("failed", Boolean(ent.error));
    ent.tile.title = [`${ent.id}`, `last changed ${new Date(data.last_changed).toLocaleString()}`, ent.error]
      .filter(Boolean)
      .join("\n");
    if (toggles) {
      ent.tile.disabled = unavailable;
      ent.tile.setAttribute("aria-pressed", String(data.state === "on"));
      ent.tile.setAttribute("aria-busy", String(ent.pending));
    }
    const value = toggles && !unavailable ? (data.state === "on" ? "On" : "Off") : data.state;
    fill(
      ent.tile,
      h("span.tile-label", {}, nameOf(ent)),
      h("span.tile-value", {}, toggles && h("span.switch", { "aria-hidden": "true" }), value, unit && h("span.unit", {}, ` ${unit}`)),
      ent.pending && h("span.tile-detail", {}, "Switching…"),
      ent.error && h("span.tile-error", { role: "alert" }, ent.error),
    );
  }

  function placeEntity(ent) {
    const grid = domainGrid(ent.domain);
    const name = nameOf(ent).toLocaleLowerCase();
    const before = [...grid.children].find((t) => t.dataset.sort > name);
    ent.tile.dataset.sort = name;
    grid.insertBefore(ent.tile, before ?? null);
  }

  function removeEntity(ent) {
    clearTimeout(ent.timer);
    ent.tile.remove();
    entities.delete(ent.id);
    const entry = domains.get(ent.domain);
    if (entry && entry.grid.children.length === 0) {
      entry.section.remove();
      domains.delete(ent.domain);
    }
  }

  async function toggle(ent) {
    if (ent.pending) return;
    ent.pending = true;
    ent.error = null;
    renderEntity(ent);
    try {
      await client.call(HA, "call_service", {
        domain: ent.domain,
        service: "toggle",
        target: { entity_id: ent.id },
      });
      // The tile updates from the state event HA pushes; stop waiting for it after a while.
      if (ent.pending) {
        ent.timer = setTimeout(() => {
          ent.pending = false;
          renderEntity(ent);
        }, SETTLE_MS);
      }
    } catch (err) {
      ent.pending = false;
      ent.error = `Failed: ${err.message}`;
      renderEntity(ent);
    }
  }

  function onEntity(id, data) {
    let ent = entities.get(id);
    if (data === null || typeof data !== "object") {
      if (ent) removeEntity(ent);
      renderEmpty();
      return;
    }
    const isNew = !ent;
    if (isNew) {
      const domain = id.split(".")[0];
      const tile = TOGGLE_DOMAINS.has(domain)
        ? h("button.tile.entity.toggle", { type: "button" })
        : h("div.tile.entity");
      tile.dataset.entity = id;
      ent = { id, domain, data, tile, pending: false, error: null, timer: null };
      if (TOGGLE_DOMAINS.has(domain)) tile.addEventListener("click", () => toggle(ent));
      entities.set(id, ent);
    }
    const renamed = !isNew && nameOf(ent) !== (data.attributes?.friendly_name || id);
    ent.data = data;
    ent.pending = false;
    clearTimeout(ent.timer);
    renderEntity(ent);
    if (isNew || renamed) placeEntity(ent);
    renderEmpty();
  }

  function onOther(event, replayed) {
    const key = `${event.module}.${event.name}`;
    let tile = others.get(key);
    if (!tile && !replayed) return; // only retained state gets a tile
    if (event.data === null) {
      tile?.remove();
      others.delete(key);
      return;
    }
    if (!tile) {
      tile = h("div.tile.retained", { dataset: { key } });
      others.set(key, tile);
      const before = [...othersRow.children].find((t) => t.dataset.key > key);
      othersRow.insertBefore(tile, before ?? null);
    }
    tile.title = `${key}, updated ${new Date(event.timestamp).toLocaleTimeString()}`;
    fill(
      tile,
      h("span.tile-label", {}, `${event.module} · ${event.name}`),
      h("span.tile-value", {}, summarize(event.data)),
    );
  }

  const unsubscribe = client.subscribe("*.*", {
    onEvent(event, replayed) {
      if (event.module === HA) {
        if (event.name.startsWith("state.")) onEntity(event.name.slice(6), event.data);
        else if (event.name === "status") renderHaStatus(event.data);
      } else if (event.module !== "vessel") {
        onOther(event, replayed);
      }
    },
    onSynced() {
      synced = true;
      if (haTile.dataset.state === "loading") renderHaStatus(null);
      renderEmpty();
    },
  });

  return () => {
    unsubscribe();
    for (const ent of entities.values()) clearTimeout(ent.timer);
  };
}
