// Small helpers shared by the views: building elements, formatting figures, globs.

/**
 * h("button.primary#save", {type: "submit", onclick}, "Save") builds an element.
 * Attributes starting with "on" become listeners; `hidden`, `disabled`, `checked` and
 * other booleans are set as properties; null/undefined/false children are skipped.
 */
export function h(spec, attrs = {}, ...children) {
  const [, tag, rest] = /^([a-z0-9-]+)(.*)$/i.exec(spec);
  const el = document.createElement(tag);
  for (const part of rest.match(/[.#][^.#]+/g) ?? []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Text with `backticked` parts (a command a module's message names) as <code>. */
export function withCode(text) {
  return String(text)
    .split(/`([^`]*)`/)
    .map((part, i) => (i % 2 ? h("code", {}, part) : part))
    .filter((part) => part !== "");
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hours / 24)}d${String(hours % 24).padStart(2, "0")}h`;
}

/** "14:03:07.250" for a timestamp in milliseconds. */
export function formatClock(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(
    d.getMilliseconds(),
  ).padStart(3, "0")}`;
}

/**
 * A RegExp for a shell glob as the daemon matches `module.name` (Python's fnmatch):
 * `*` matches anything (dots too), `?` one character, `[...]` a set (`[!...]` negated).
 */
export function globRegExp(glob) {
  let out = "";
  for (let i = 0; i < glob.length; i += 1) {
    const c = glob[i];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) {
        out += "\\[";
        continue;
      }
      let set = glob.slice(i + 1, end).replace(/\\/g, "\\\\");
      if (set[0] === "!") set = `^${set.slice(1)}`;
      else if (set[0] === "^") set = `\\${set}`;
      out += `[${set}]`;
      i = end;
    } else out += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp(`^${out}$`, "s");
}

/** Split "home-assistant.state.*" at its first dot, as vessel-ctl does ("x" = "x.*"). */
export function splitPattern(pattern) {
  const dot = pattern.indexOf(".");
  if (dot < 0) return [pattern, "*"];
  return [pattern.slice(0, dot), pattern.slice(dot + 1)];
}
