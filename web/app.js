// The page shell: sign-in, the connection badge, and the router between the views.
//
// A view is a module exporting mount(root, client, route) -> unmount() (which may carry
// update(route), for a change of the hash's query within the view). It subscribes to
// what it shows through client.subscribe(), so the subscriptions held at any time are
// those of the current view; the client re-sends them after a reconnect.

import { Vessel } from "./vessel.js";
import * as home from "./home.js";
import * as modules from "./modules.js";
import * as events from "./events.js";
import * as logs from "./logs.js";
import { startAlerts } from "./alerts.js";

const VIEWS = { home, modules, events, logs };
const TOKEN_KEY = "vessel.token";

const $ = (id) => document.getElementById(id);
let client = null;
let view = null; // {name, arg, unmount}
let countdown = null;
let stopAlerts = null; // the crash/failure toasts and badge follow the signed-in client

function route() {
  // "#/modules/home-assistant?x=y" -> {name: "modules", arg: "home-assistant", query}
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return {
    name: VIEWS[name] ? name : "home",
    arg: rest.length ? decodeURIComponent(rest.join("/")) : null,
    query: new URLSearchParams(search),
  };
}

function showView() {
  const r = route();
  if (view && view.name === r.name && view.arg === r.arg) {
    view.unmount.update?.(r); // the same view, maybe another query: it applies it
    return;
  }
  view?.unmount();
  const main = $("main");
  main.replaceChildren();
  main.dataset.view = r.name;
  for (const a of document.querySelectorAll(".tabs a")) {
    if (a.dataset.view === r.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${VIEWS[r.name].title} · Vessel`;
  view = { name: r.name, arg: r.arg, unmount: VIEWS[r.name].mount(main, client, r) };
}

function renderStatus() {
  const badge = $("conn");
  const s = client?.status ?? { state: "signed-out" };
  clearInterval(countdown);
  badge.dataset.state = s.state;
  $("main").toggleAttribute("data-offline", s.state !== "connected"); // what it shows may be stale
  badge.title = s.reason ? `Last disconnect: ${s.reason}` : "Connection to the daemon";
  const label = () => {
    switch (s.state) {
      case "connected":
        return "Connected";
      case "connecting":
        return s.again ? "Reconnecting…" : "Connecting…";
      case "reconnecting":
        return `Reconnecting in ${Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000))}s`;
      default:
        return "Signed out";
    }
  };
  const signingIn = !$("signin").hidden;
  const paint = () => {
    badge.textContent = label();
    if (signingIn) {
      $("signin-status").textContent =
        s.state === "reconnecting" ? `${s.reason}; ${label().toLowerCase()}` : "";
    }
  };
  paint();
  if (s.state === "reconnecting") countdown = setInterval(paint, 250);
  if (signingIn) {
    $("signin-submit").disabled = s.state === "connecting"; // else retry, maybe with another token
    if (s.state === "reconnecting") $("signin-submit").textContent = "Sign in";
  }
}

function showSignIn(message) {
  view?.unmount();
  view = null;
  $("main").replaceChildren();
  $("main").hidden = true;
  $("bar").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  $("signin-submit").disabled = false;
  $("signin-submit").textContent = "Sign in";
  $("signin-status").textContent = "";
  $("token").focus();
}

function showApp() {
  $("signin").hidden = true;
  $("bar").hidden = false;
  $("main").hidden = false;
  showView();
}

/** Connect with `token`; `saved` says whether it came from localStorage. */
function start(token, saved) {
  client?.stop();
  stopAlerts?.();
  client = new Vessel(token);
  stopAlerts = startAlerts(client);
  client.addEventListener("status", renderStatus);
  client.addEventListener("ready", () => {
    localStorage.setItem(TOKEN_KEY, token);
    if ($("main").hidden) showApp();
  });
  client.addEventListener("unauthorized", (e) => {
    localStorage.removeItem(TOKEN_KEY);
    const which = saved ? "the saved token" : "this token";
    showSignIn(`The daemon refused ${which} (${e.detail}). Check the token and try again.`);
  });
  client.start();
  if (saved) showApp(); // optimistic: the saved token worked before
}

function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  client?.stop();
  stopAlerts?.();
  stopAlerts = null;
  client = null;
  renderStatus();
  showSignIn(null);
  $("token").value = "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!/^[\x21-\x7e]+$/.test(token)) {
      showSignIn("A token is printable ASCII without spaces: copy it again from the token file.");
      return;
    }
    $("signin-error").hidden = true;
    $("signin-submit").disabled = true;
    $("signin-submit").textContent = "Signing in…";
    start(token, false);
  });
  $("signout").addEventListener("click", signOut);
  $("conn").addEventListener("click", () => client?.connect());
  window.addEventListener("hashchange", () => {
    if (!$("main").hidden) showView();
  });
  const saved = localStorage.getItem(TOKEN_KEY);
  if (saved) start(saved, true);
  else showSignIn(null);
});
