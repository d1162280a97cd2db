// The console: polls /console/state and /console/devices every 3 s and redraws; the add
// and edit form, Test, Enable/Disable, dead letters, Replay and Delete call the control
// API under /console/v1/ (the same code path as `roomhook webhook …`) with the CSRF token.
"use strict";
const $ = (id) => document.getElementById(id);
const text = (v) => (v === null || v === undefined ? "" : String(v));
const csrf = () => document.querySelector('meta[name="csrf"]').content;
function el(tag, attrs, children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children || []) e.appendChild(c);
  return e;
}
function cell(row, value, cls) {
  row.appendChild(el("td", { text: text(value), class: cls || "" }));
}
function age(s) {
  if (s === null || s === undefined) return "";
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function counts(r, key) {
  if (!r) return "";
  return ["5m", "1h", "24h"].map((w) => text(r[key + "_" + w])).join(" / ");
}
function reasons(map) {
  return Object.entries(map || {}).map(([k, v]) => k + " " + v).join(", ");
}

// Each cell carries its column's heading (a phone shows rows as cards).
function labelCells(tbody) {
  const heads = [...tbody.parentElement.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const tr of tbody.rows) [...tr.cells].forEach((td, i) => { td.dataset.label = heads[i] || ""; });
}

// ---- the live view ----
function draw(s) {
  $("version").textContent = s.version;
  $("verdict").textContent = s.ready ? "ready" : "not ready";
  $("verdict").className = s.ready ? "ok" : "bad";
  const hooks = $("webhooks");
  hooks.replaceChildren();
  for (const w of s.webhooks) {
    const tr = el("tr", { "data-webhook": w.name });
    cell(tr, w.name);
    cell(tr, w.state, w.state === "active" ? "ok" : "bad");
    cell(tr, counts(w.recent, "delivered"), "delivered");
    cell(tr, counts(w.recent, "errors"), "errors");
    cell(tr, w.queue.events, "queued");
    cell(tr, age(w.queue.oldest_age_s));
    cell(tr, w.in_flight + " of " + w.in_flight_limit);
    cell(tr, w.last_error ? w.last_error.message : "");
    actions(tr, w);
    hooks.appendChild(tr);
  }
  labelCells(hooks);
  charts(s.webhooks);
  const sources = $("sources");
  sources.replaceChildren();
  for (const x of s.sources) {
    const tr = el("tr");
    cell(tr, x.name);
    cell(tr, x.connected ? "yes" : "no", x.connected ? "ok" : "bad");
    cell(tr, x.messages);
    cell(tr, x.decode_errors + (x.decode_errors ? " (" + reasons(x.decode_errors_by_reason) + ")" : ""));
    cell(tr, age(x.last_message_age_s));
    cell(tr, x.last_error);
    sources.appendChild(tr);
  }
  labelCells(sources);
  const st = s.store;
  $("store-use").value = st.max_bytes ? st.bytes / st.max_bytes : 0;
  $("store").textContent = (st.bytes / 1048576).toFixed(1) + " MiB of " + (st.max_bytes / 1048576).toFixed(0) +
    " MiB; " + st.errors + " failed commits" + (st.ok ? "" : " (failing: " + text(st.last_error) + ")");
  const drops = reasons(st.dropped);
  $("store-drops").textContent = "Dropped: " + (drops || "none");
  const problems = $("problems");
  problems.replaceChildren();
  for (const p of s.problems) problems.appendChild(el("li", { text: p }));
  // With [fleet] config_url the fleet's document owns the webhooks (when it has any, or
  // none is in force yet): edits are refused.
  const f = s.fleet;
  const managed = !!(f && f.config_url && f.webhooks_managed);
  $("add").disabled = managed;
  $("fleet").hidden = !f;
  if (f) {
    $("fleet").textContent = "Fleet (gateway " + f.gateway + "): " +
      (f.config_url ? (managed ? "webhooks managed by " : "subscriptions managed by ") + f.config_url + "; last pull: " + text(f.result || "none yet") + " " + text(f.at || "") +
        (f.reason ? " — " + f.reason : "") + (f.config_sha256 ? "; document " + f.config_sha256.slice(0, 12) : "") : "") +
      (f.report_url ? "; reports to " + f.report_url + ": " + text(f.report_result || "none yet") : "");
  }
}
// One chart per webhook (an SVG the gateway draws), refreshed with each poll.
function charts(webhooks) {
  const box = $("charts");
  const names = webhooks.map((w) => w.name);
  for (const f of [...box.children]) if (!names.includes(f.dataset.webhook)) f.remove();
  for (const name of names) {
    let f = [...box.children].find((c) => c.dataset.webhook === name);
    if (!f) {
      f = el("figure", { "data-webhook": name }, [el("img", { alt: "" }), el("figcaption", { text: name + ": the last hour, per minute" })]);
      box.appendChild(f);
    }
    const img = f.querySelector("img");
    img.src = "/console/chart/" + encodeURIComponent(name) + ".svg?t=" + Date.now();
    img.alt = "Delivered events and failed requests of " + name + " per minute over the last hour";
  }
}
function drawDevices(list) {
  const body = $("devices");
  body.replaceChildren();
  for (const d of list) {
    const tr = el("tr", { "data-device": d.device });
    cell(tr, d.device);
    cell(tr, d.workspace);
    cell(tr, age(d.last_age_s));
    const td = el("td");
    for (const v of d.values) {
      td.appendChild(el("div", { class: "value", text: v.path + " = " + JSON.stringify(v.value) }));
    }
    tr.appendChild(td);
    body.appendChild(tr);
  }
  labelCells(body);
}
async function poll() {
  try {
    const r = await fetch("/console/state", { credentials: "same-origin" });
    if (r.status === 401) { location.href = "/"; return; }
    draw(await r.json());
    const d = await fetch("/console/devices", { credentials: "same-origin" });
    if (d.ok) drawDevices(await d.json());
  } catch (e) {
    $("verdict").textContent = "no answer from the gateway";
    $("verdict").className = "bad";
  }
}

// ---- actions ----
async function call(method, path, body) {
  const headers = { "X-CSRF-Token": csrf() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch("/console" + path, {
    method, credentials: "same-origin", headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = {};
  try { answer = await r.json(); } catch (e) { /* empty answer */ }
  return { ok: r.ok, status: r.status, body: answer };
}
async function act(method, path, what) {
  const out = $("outcome");
  out.textContent = what + " …";
  out.className = "";
  try {
    const r = await call(method, path);
    out.textContent = what + ": " + (r.ok ? summary(r.body) : (r.body.error || "HTTP " + r.status));
    out.className = r.ok ? "ok" : "bad";
  } catch (e) {
    out.textContent = what + ": no answer from the gateway";
    out.className = "bad";
  }
  poll();
}
function report(t) {
  return "HTTP " + text(t.status) + " in " + Number(t.latency_ms).toFixed(1) + " ms over " +
    text(t.tls_version) + "; certificate " + text(t.peer_subject) + " (issuer " + text(t.peer_issuer) +
    "), expires " + text(t.peer_not_after);
}
function summary(b) {
  if (b.test) return report(b.test);
  if (b.deleted !== undefined) return "deleted; " + b.discarded + " queued event(s) went with it";
  if (b.replayed !== undefined) return b.replayed + " dead letter(s) queued again";
  if (b.verified) return "verified: " + report(b.verified);
  return "done";
}
function button(parent, label, onclick, name) {
  const b = el("button", { type: "button", text: label });
  if (name) b.setAttribute("aria-label", name);
  b.addEventListener("click", onclick);
  parent.appendChild(b);
}
function actions(tr, w) {
  const td = el("td", { class: "actions" });
  const n = encodeURIComponent(w.name);
  button(td, "Edit", () => openEditor(w.name), "Edit " + w.name);
  button(td, "Test", () => act("POST", "/v1/webhooks/" + n + "/test", "Test " + w.name), "Test " + w.name);
  button(td, w.enabled ? "Disable" : "Enable", () =>
    act("POST", "/v1/webhooks/" + n + (w.enabled ? "/disable" : "/enable"), (w.enabled ? "Disable " : "Enable ") + w.name),
    (w.enabled ? "Disable " : "Enable ") + w.name);
  if (w.queue.dead_letters > 0) {
    button(td, "Dead letters (" + w.queue.dead_letters + ")", () => showDead(w.name), "Dead letters of " + w.name);
  }
  button(td, "Delete", () => {
    if (confirm("Delete " + w.name + "? " + w.queue.events + " queued event(s) go with it.")) {
      act("DELETE", "/v1/webhooks/" + n, "Delete " + w.name);
    }
  }, "Delete " + w.name);
  tr.appendChild(td);
}
let deadName = null;
async function showDead(name) {
  deadName = name;
  $("dead").hidden = false;
  $("dead-title").textContent = "Dead letters of " + name;
  const rows = $("dead-rows");
  rows.replaceChildren();
  const r = await call("GET", "/v1/webhooks/" + encodeURIComponent(name) + "/dead-letters");
  for (const d of (r.body.dead_letters || [])) {
    const tr = el("tr");
    cell(tr, d.at);
    cell(tr, d.status);
    cell(tr, d.reason);
    cell(tr, d.event ? text(d.event.d) + " " + text(d.event.p) : "");
    rows.appendChild(tr);
  }
  labelCells(rows);
}

// ---- the add and edit form ----
let catalog = null;
let editing = null; // the webhook as loaded (GET /v1/webhooks/NAME), null when adding
const PACING = [
  ["max_in_flight", "Most requests in flight", "int"],
  ["rate_limit", "Requests per second at most", "float", "unlimited"],
  ["burst", "Burst (requests saved up)", "int", "one second's worth"],
  ["batch_max_messages", "Messages per request", "int"],
  ["batch_max_bytes", "Largest batch body", "text"],
  ["batch_linger", "Batch linger", "text"],
  ["ordering", "Ordering (device or none)", "text"],
  ["connect_timeout", "Connect timeout", "text"],
  ["request_timeout", "Request timeout", "text"],
  ["retry_base", "First retry after", "text"],
  ["retry_max", "Longest retry interval", "text"],
  ["circuit_breaker_threshold", "Failures that open the circuit", "int"],
  ["auth_retry", "Retry after 401/403 every", "text"],
  ["drain_start_jitter", "Start-up jitter", "text"],
  ["overflow", "When the store is full (drop_oldest, coalesce, block)", "text"],
  ["compression", "Compress bodies of 1 KiB or more (none or gzip)", "text"],
  ["conflate", "Send only the newest queued value of each status (true or false)", "bool"],
  ["priority", "Priority on the uplink budget (0 lowest to 9 highest)", "int"],
  ["uplink_weight", "Share of the uplink budget among its priority", "int"],
  ["max_queue_age", "Drop events older than", "text", "never"],
];
function groups(box, entries, kind) {
  box.replaceChildren();
  const by = {};
  for (const e of entries) (by[e.group] = by[e.group] || []).push(e);
  for (const [g, list] of Object.entries(by)) {
    const fs = el("fieldset", { class: "group" }, [el("legend", { text: g })]);
    if (list.length > 1 && g.indexOf(" ") < 0) {
      fs.appendChild(el("label", { class: "inline" }, [
        el("input", { type: "checkbox", "data-kind": kind, value: g + ".*" }), document.createTextNode(" all of " + g + " (" + g + ".*)")]));
    }
    for (const e of list) {
      fs.appendChild(el("label", { class: "inline" }, [
        el("input", { type: "checkbox", "data-kind": kind, value: e.path }),
        document.createTextNode(" " + e.path + " "), el("small", { text: e.type })]));
    }
    box.appendChild(fs);
  }
}
async function loadCatalog() {
  const r = await fetch("/console/catalog", { credentials: "same-origin" });
  catalog = await r.json();
  groups($("f-statuses"), catalog.statuses, "status");
  groups($("f-events"), catalog.events, "event");
  const p = $("f-pacing");
  p.replaceChildren();
  for (const [key, label, type, none] of PACING) {
    const input = el("input", { id: "p-" + key, "data-key": key, "data-type": type, autocomplete: "off",
      placeholder: catalog.defaults[key] !== undefined ? catalog.defaults[key] : none });
    if (type === "int" || type === "float") { input.type = "number"; input.step = type === "int" ? "1" : "any"; }
    p.appendChild(el("div", {}, [el("label", { for: "p-" + key, text: label + " (" + key + ")" }), input]));
  }
  const seen = $("seen-devices");
  seen.replaceChildren();
  if (catalog.devices.length) seen.appendChild(el("p", { class: "hint", text: "Devices seen so far (check to add):" }));
  for (const d of catalog.devices) {
    const box = el("input", { type: "checkbox", value: d, "data-kind": "device" });
    box.addEventListener("change", () => {
      let list;
      try { list = splitItems($("f-devices").value); } catch (e) { return; }
      const p = idPattern(d);
      list = list.filter((x) => x !== p && x !== "*");
      if (box.checked) list.push(p);
      $("f-devices").value = list.map(showItem).join(", ");
    });
    seen.appendChild(el("label", { class: "inline" }, [box, document.createTextNode(" " + d)]));
  }
}
// A config value in comparable form: durations in ms, sizes in bytes, the rest as text.
function norm(v) {
  if (v === null || v === undefined) return "";
  const s = String(v).trim();
  let m = /^([\d.]+)\s*(ms|s|m|min|h|d)$/.exec(s);
  if (m) return String(parseFloat(m[1]) * { ms: 1, s: 1e3, m: 6e4, min: 6e4, h: 36e5, d: 864e5 }[m[2]]);
  m = /^([\d.]+)\s*(b|kb|mb|gb|kib|mib|gib)$/i.exec(s);
  if (m) return String(parseFloat(m[1]) * { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 1024, mib: 1048576, gib: 1073741824 }[m[2].toLowerCase()]);
  return s;
}
// A loaded pacing value, or null when it is the default (the field then stays empty).
function setting(w, key) {
  const v = w[key];
  if (v === null || v === undefined) return null;
  if (norm(v) === norm(catalog.defaults[key])) return null;
  if (key === "burst" && v === Math.max(1, Math.ceil(w.rate_limit || 1))) return null;
  return v;
}
const splitList = (s) => s.split(",").map((x) => x.trim()).filter((x) => x);
// A device id as the pattern that selects it alone: a publisher chooses ids, so its glob
// characters (and the escape itself) are escaped.
const idPattern = (d) => d.replace(/[\\*?]/g, (c) => "\\" + c);
// A pattern as the devices field shows it: quoted (JSON) when a comma or quote is in it.
const showItem = (p) => (/[,"]/.test(p) || p !== p.trim() ? JSON.stringify(p) : p);
// The devices field's items: text between commas, or a quoted "…" item (JSON).
function splitItems(s) {
  const out = [];
  let i = 0;
  while (i < s.length) {
    if (s[i] === "," || /\s/.test(s[i])) { i++; continue; }
    let j;
    if (s[i] === '"') {
      for (j = i + 1; j < s.length && s[j] !== '"'; j += s[j] === "\\" ? 2 : 1);
      const quoted = s.slice(i, j + 1);
      try { out.push(JSON.parse(quoted)); } catch (e) { throw new Error("The device " + quoted + " is not a complete quoted item."); }
      j += 1;
    } else {
      j = s.indexOf(",", i);
      if (j < 0) j = s.length;
      out.push(s.slice(i, j).trim());
    }
    i = j;
  }
  return out.filter((x) => x);
}
function authKind() { return document.querySelector('input[name="auth"]:checked').value; }
function showAuth() {
  $("auth-token").hidden = authKind() !== "token";
  $("auth-basic").hidden = authKind() !== "basic";
}
function setChecks(kind, values, pattern = (v) => v) {
  const left = new Set(values);
  for (const b of document.querySelectorAll('input[data-kind="' + kind + '"]')) {
    b.checked = left.delete(pattern(b.value));
  }
  return [...left];
}
function checked(kind) {
  return [...document.querySelectorAll('input[data-kind="' + kind + '"]:checked')].map((b) => b.value);
}
async function openEditor(name) {
  delete $("editor").dataset.ready;
  await loadCatalog();
  $("form-result").textContent = "";
  $("webhook-form").reset();
  editing = null;
  $("secret-hint").hidden = true;
  $("headers-hint").hidden = true;
  if (name) {
    const r = await call("GET", "/v1/webhooks/" + encodeURIComponent(name));
    if (!r.ok) { $("outcome").textContent = "Edit " + name + ": " + (r.body.error || r.status); return; }
    editing = r.body;
    const w = editing;
    $("h-editor").textContent = "Edit " + w.name;
    $("f-name").value = w.name;
    $("f-url").value = w.url;
    $("f-enabled").checked = w.enabled;
    document.querySelector('input[name="auth"][value="' + (w.auth.kind === "authorization" ? "token" : w.auth.kind) + '"]').checked = true;
    $("f-username").value = w.auth.username || "";
    $("f-authorization").placeholder = w.auth.kind === "authorization" ? "*** (kept)" : "Bearer …";
    $("f-password").placeholder = w.auth.kind === "basic" ? "*** (kept)" : "";
    $("f-signing").placeholder = w.signed ? "*** (kept)" : "";
    $("secret-hint").hidden = false;
    $("f-ca").value = text(w.ca_file);
    $("f-cert").value = text(w.client_cert_file);
    $("f-key").value = text(w.client_key_file);
    const hn = Object.keys(w.headers || {});
    if (hn.length) { $("headers-hint").hidden = false; $("headers-hint").textContent = "Now: " + hn.join(", ") + " (values ***). Leave empty to keep them; anything typed replaces them all."; }
    $("f-devices").value = w.devices.map(showItem).join(", ");
    setChecks("device", w.devices, idPattern);
    $("f-statuses-more").value = setChecks("status", w.statuses).join(", ");
    $("f-events-more").value = setChecks("event", w.events).join(", ");
    for (const [key] of PACING) $("p-" + key).value = text(setting(w, key));
  } else {
    $("h-editor").textContent = "Add webhook";
    $("f-authorization").placeholder = "Bearer …";
    $("f-password").placeholder = "";
    $("f-signing").placeholder = "";
  }
  showAuth();
  $("editor").hidden = false;
  $("editor").dataset.ready = "1";
  $("f-name").focus();
  $("editor").scrollIntoView();
}
function pacingValue(input) {
  const key = input.dataset.key;
  if (input.validity && input.validity.badInput) throw new Error(key + ": not a number.");
  const v = input.value.trim();
  if (v === "") return null;
  const t = input.dataset.type;
  if (t === "int" || t === "float") {
    const n = Number(v);
    if (!Number.isFinite(n) || (t === "int" && !Number.isInteger(n))) {
      throw new Error(key + ": " + v + " is not a " + (t === "int" ? "whole number." : "number."));
    }
    return n;
  }
  if (t === "bool") {
    if (v !== "true" && v !== "false") throw new Error(key + ": write true or false.");
    return v === "true";
  }
  return v; // durations, sizes and words go as the config writes them ("50ms", "1MiB")
}
function headers() {
  const out = {};
  for (const line of $("f-headers").value.split("\n")) {
    if (!line.trim()) continue;
    const i = line.indexOf(":");
    if (i <= 0) throw new Error("Extra headers: " + JSON.stringify(line) + " is not \"Name: value\".");
    out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}
// The config keys the form says: everything for a new webhook; for an edit, only what changed
// (secrets only when typed; an emptied optional key is removed with null).
function formValues() {
  const w = editing;
  const v = {};
  // Lists compare as sets: the config's order is kept unless the selection changed.
  const same = (a, b) => JSON.stringify(Array.isArray(a) ? [...a].sort() : a) ===
    JSON.stringify(Array.isArray(b) ? [...b].sort() : (b === undefined ? null : b));
  const put = (key, value, before) => {
    if (!w) { if (value !== null && value !== "" && !(Array.isArray(value) && !value.length)) v[key] = value; return; }
    if (!same(value, before)) v[key] = value;
  };
  put("name", $("f-name").value.trim(), w && w.name);
  put("url", $("f-url").value.trim(), w && w.url);
  if (v.url !== undefined && v.url.includes("***")) {
    throw new Error("Type the whole URL again: parts of it are hidden as ***.");
  }
  if (!w ? !$("f-enabled").checked : $("f-enabled").checked !== w.enabled) v.enabled = $("f-enabled").checked;
  const kind = authKind();
  const was = w ? (w.auth.kind === "authorization" ? "token" : w.auth.kind) : null;
  if (kind === "none") {
    if (was !== "none") v.auth = "none";
  } else if (kind === "token") {
    const a = $("f-authorization").value;
    if (a) v.authorization = a;
    else if (was !== "token") throw new Error("Type the Authorization header value.");
  } else {
    const u = $("f-username").value.trim();
    const p = $("f-password").value;
    if (!u) throw new Error("Type the user name.");
    if (p || was !== "basic" || u !== w.auth.username) {
      if (!p) throw new Error("Type the password (a changed user name needs it again).");
      v.username = u;
      v.password = p;
    }
  }
  if ($("f-signing").value) v.signing_secret = $("f-signing").value;
  const file = (id) => $(id).value.trim() || null;
  put("ca_file", file("f-ca"), w && w.ca_file);
  put("client_cert_file", file("f-cert"), w && w.client_cert_file);
  put("client_key_file", file("f-key"), w && w.client_key_file);
  const h = headers();
  if (Object.keys(h).length) v.headers = h;
  const devices = splitItems($("f-devices").value);
  if (!devices.length) throw new Error("Choose the devices (or type * for every device).");
  put("devices", devices, w && w.devices);
  put("statuses", checked("status").concat(splitList($("f-statuses-more").value)), w && w.statuses);
  put("events", checked("event").concat(splitList($("f-events-more").value)), w && w.events);
  for (const [key] of PACING) {
    const value = pacingValue($("p-" + key));
    if (!w) { if (value !== null) v[key] = value; continue; }
    if (norm(value) !== norm(setting(w, key))) v[key] = value;
  }
  // A burst left to its default follows a new rate.
  if (w && v.rate_limit !== undefined && v.burst === undefined && $("p-burst").value.trim() === "") v.burst = null;
  return v;
}
async function save(ev) {
  ev.preventDefault();
  const out = $("form-result");
  let values;
  try { values = formValues(); } catch (e) { out.textContent = e.message; out.className = "bad"; return; }
  if (editing && !Object.keys(values).length) { out.textContent = "Nothing changed."; out.className = ""; return; }
  out.textContent = editing ? "Saving and verifying …" : "Verifying the receiver …";
  out.className = "";
  $("save").disabled = true;
  try {
    const r = editing
      ? await call("PATCH", "/v1/webhooks/" + encodeURIComponent(editing.name), values)
      : await call("POST", "/v1/webhooks", values);
    if (r.ok) {
      const what = (editing ? "Saved " : "Added ") + (values.name || editing.name);
      $("editor").hidden = true;
      $("outcome").textContent = what + (r.body.verified ? "; verified: " + report(r.body.verified) : "");
      $("outcome").className = "ok";
      editing = null;
      poll();
    } else {
      out.textContent = "Not saved: " + (r.body.error || "HTTP " + r.status);
      out.className = "bad";
    }
  } catch (e) {
    out.textContent = "Not saved: no answer from the gateway";
    out.className = "bad";
  } finally {
    $("save").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("add").addEventListener("click", () => openEditor(null));
  $("cancel").addEventListener("click", () => { $("editor").hidden = true; editing = null; });
  $("webhook-form").addEventListener("submit", save);
  for (const r of document.querySelectorAll('input[name="auth"]')) r.addEventListener("change", showAuth);
  $("dead-close").addEventListener("click", () => { $("dead").hidden = true; });
  $("dead-replay").addEventListener("click", async () => {
    if (deadName) { await act("POST", "/v1/webhooks/" + encodeURIComponent(deadName) + "/replay", "Replay " + deadName); $("dead").hidden = true; }
  });
  poll();
  setInterval(poll, 3000);
});
