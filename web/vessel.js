// The page's one connection to the daemon: WebSocket protocol v1 (docs/protocol.md)
// for events and calls, and the REST API (docs/api.md) for administration.
//
// Vessel keeps the WebSocket up by itself: after a close that is not a refusal of the
// token it reconnects with exponential backoff (1 s doubling to 10 s, with jitter),
// authenticates again and re-sends every subscription the views hold, so a view that
// subscribed once keeps getting its events (and the retained state again) across
// daemon restarts. It dispatches an EventTarget "status" event on every change of
// `status` ({state: "connecting" | "connected" | "reconnecting" | "signed-out",
// again?, retryAt?, reason?}), "ready" when the daemon accepted the token, and "unauthorized"
// (detail: the daemon's reason) when it refused it; it does not reconnect after that.

import { globRegExp, splitPattern } from "./dom.js";

const BACKOFF_INITIAL_MS = 1000;
const BACKOFF_MAX_MS = 10000;
const CALL_TIMEOUT_MS = 30000;
const ALIVE_TIMEOUT_MS = 5000;
const CLOSE_UNAUTHORIZED = 4401;

/** A failed call or REST request: `code` is the daemon's stable error code. */
export class ApiError extends Error {
  constructor(code, message, status = null) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export class Vessel extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.status = { state: "connecting" };
    this.ws = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = false;
    this.nextId = 1;
    /** request_id -> {resolve, reject, timer} */
    this.pending = new Map();
    /** pattern -> {pattern, module, name, regexp, handlers: Set, synced} */
    this.subs = new Map();
    this.wake = () => {
      if (this.status.state === "reconnecting") this.connect();
    };
    this.onVisible = () => {
      if (document.visibilityState !== "visible") return;
      if (this.connected) this.checkAlive();
      else this.wake();
    };
  }

  get connected() {
    return this.status.state === "connected";
  }

  start() {
    window.addEventListener("online", this.wake);
    document.addEventListener("visibilitychange", this.onVisible);
    this.connect();
  }

  /** Close for good (sign-out): no reconnect, pending calls fail. */
  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.wake);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "signed out");
    this.failPending("signed out");
    this.setStatus({ state: "signed-out" });
  }

  /** Connect now (also "retry now" while waiting out a backoff). */
  connect() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    if (this.ws) return;
    this.setStatus({ state: "connecting", again: this.attempt > 0 });
    const url = new URL("ws", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.addEventListener("open", () => {
      // Browsers cannot set headers on a WebSocket: the token is the first message.
      ws.send(JSON.stringify({ type: "auth", token: this.token }));
    });
    ws.addEventListener("message", (e) => {
      if (ws === this.ws) this.receive(JSON.parse(e.data));
    });
    ws.addEventListener("close", (e) => this.closed(ws, e));
  }

  /**
   * A phone that slept may hold a socket that died without a close event: ask the
   * daemon something cheap, and reconnect if it does not answer in time.
   */
  checkAlive() {
    const ws = this.ws;
    this.call("vessel", "ping", {}, { timeoutMs: ALIVE_TIMEOUT_MS }).catch((err) => {
      if (err.code !== "timeout" || ws !== this.ws) return;
      this.closed(ws, { code: 1006, reason: "the daemon stopped answering" });
      ws.close();
    });
  }

  setStatus(status) {
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  receive(msg) {
    switch (msg.type) {
      case "ready":
        this.attempt = 0;
        this.setStatus({ state: "connected" });
        for (const sub of this.subs.values()) this.sendSubscribe(sub);
        this.dispatchEvent(new Event("ready")); // after: a view mounted now subscribes itself
        break;
      case "event": {
        const key = `${msg.module}.${msg.name}`;
        for (const sub of [...this.subs.values()]) {
          if (!sub.regexp.test(key)) continue;
          for (const handler of [...sub.handlers]) handler.onEvent?.(msg, msg.replayed === true);
        }
        break;
      }
      case "response": {
        const call = this.pending.get(msg.request_id);
        if (!call) break;
        this.pending.delete(msg.request_id);
        clearTimeout(call.timer);
        if (msg.success) call.resolve(msg.data);
        else call.reject(new ApiError(msg.data?.code ?? "error", msg.data?.message ?? "failed"));
        break;
      }
      case "error":
        if (msg.code !== "unauthorized") console.warn("vessel:", msg.code, msg.message);
        break;
      default:
        break; // protocol v1 may grow new message types: ignore them
    }
  }

  closed(ws, e) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.failPending("the connection to the daemon was lost");
    for (const sub of this.subs.values()) sub.synced = false;
    if (this.stopped) return;
    if (e.code === CLOSE_UNAUTHORIZED) {
      this.stopped = true;
      const reason = e.reason || "unauthorized: missing or wrong token";
      this.setStatus({ state: "signed-out", reason });
      this.dispatchEvent(new CustomEvent("unauthorized", { detail: reason }));
      return;
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    const reason = e.reason || (e.code === 1006 ? "the daemon is not reachable" : `closed (${e.code})`);
    this.setStatus({ state: "reconnecting", retryAt: Date.now() + delay, reason });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  failPending(why) {
    for (const [id, call] of this.pending) {
      clearTimeout(call.timer);
      call.reject(new ApiError("connection_lost", why));
      this.pending.delete(id);
    }
  }

  /** Send a message with a fresh request_id; resolves with the response's data. */
  request(msg, timeoutMs = CALL_TIMEOUT_MS) {
    if (!this.connected || !this.ws) {
      return Promise.reject(new ApiError("not_connected", "not connected to the daemon"));
    }
    const id = `r${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError("timeout", `no answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...msg, request_id: id }));
    });
  }

  /** Call a module's command over /ws: resolves with its JSON answer, or ApiError. */
  call(module, name, params = {}, { version = 1, timeoutMs = CALL_TIMEOUT_MS } = {}) {
    return this.request({ type: "call", module, name, version, params }, timeoutMs);
  }

  /**
   * Receive the events matching `pattern` ("module.name" glob) while the returned
   * function has not been called. handler.onEvent(event, replayed) gets each event;
   * `replayed` is true for the retained state a subscribe replays (the server marks it;
   * it all comes before the acknowledgement). handler.onSynced(replayedCount) runs at
   * each acknowledgement: after
   * the first subscribe and again after every reconnect.
   */
  subscribe(pattern, handler) {
    let sub = this.subs.get(pattern);
    if (!sub) {
      const [module, name] = splitPattern(pattern);
      sub = { pattern, module, name, regexp: globRegExp(pattern), handlers: new Set(), synced: false };
      this.subs.set(pattern, sub);
      if (this.connected) this.sendSubscribe(sub);
    }
    sub.handlers.add(handler);
    return () => {
      sub.handlers.delete(handler);
      if (sub.handlers.size > 0 || this.subs.get(pattern) !== sub) return;
      this.subs.delete(pattern);
      if (this.connected) {
        this.request({ type: "unsubscribe", module: sub.module, name: sub.name }).catch(() => {});
      }
    };
  }

  sendSubscribe(sub) {
    sub.synced = false;
    this.request({ type: "subscribe", module: sub.module, name: sub.name }).then(
      (data) => {
        if (this.subs.get(sub.pattern) !== sub) return;
        sub.synced = true;
        for (const handler of [...sub.handlers]) handler.onSynced?.(data?.replayed ?? 0);
      },
      (err) => {
        if (err.code === "connection_lost" || err.code === "not_connected") return;
        for (const handler of [...sub.handlers]) handler.onError?.(err);
      },
    );
  }

  /**
   * A REST request: `api("GET", "api/modules")`. Resolves with the JSON body (null for
   * 204); rejects with ApiError. A 401 signs the page out like a WebSocket 4401.
   */
  async api(method, path, { json, form } = {}) {
    const headers = { Authorization: `Bearer ${this.token}` };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let res;
    try {
      res = await fetch(new URL(path, document.baseURI), { method, headers, body, cache: "no-store" });
    } catch (err) {
      throw new ApiError("unreachable", `the daemon did not answer (${err.message})`);
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (res.ok) return data;
    const error = new ApiError(
      data?.code ?? `http_${res.status}`,
      data?.message ?? `${res.status} ${res.statusText}`,
      res.status,
    );
    if (res.status === 401 && !this.stopped) {
      this.stop();
      this.setStatus({ state: "signed-out", reason: `unauthorized: ${error.message}` });
      this.dispatchEvent(new CustomEvent("unauthorized", { detail: `unauthorized: ${error.message}` }));
    }
    throw error;
  }

  /** The raw fetch Response of a streamed REST request (the followed log). */
  stream(path, signal) {
    return fetch(new URL(path, document.baseURI), {
      headers: { Authorization: `Bearer ${this.token}` },
      cache: "no-store",
      signal,
    });
  }
}
