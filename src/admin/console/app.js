// The console's live view: polls /console/state every 3 s and redraws the tables.
"use strict";
const text = (v) => (v === null || v === undefined ? "" : String(v));
function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = text(value);
  if (cls) td.className = cls;
  row.appendChild(td);
}
function age(s) {
  if (s === null || s === undefined) return "";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}
function counts(r, key) {
  if (!r) return "";
  return ["5m", "1h", "24h"].map((w) => text(r[key + "_" + w])).join(" / ");
}
function draw(s) {
  document.getElementById("version").textContent = s.version;
  const verdict = document.getElementById("verdict");
  verdict.textContent = s.ready ? "ready" : "not ready";
  verdict.className = s.ready ? "ok" : "bad";
  const hooks = document.getElementById("webhooks");
  hooks.replaceChildren();
  for (const w of s.webhooks) {
    const tr = document.createElement("tr");
    cell(tr, w.name);
    cell(tr, w.state, w.state === "active" ? "ok" : "bad");
    cell(tr, counts(w.recent, "delivered"));
    cell(tr, counts(w.recent, "errors"));
    cell(tr, w.queue.events);
    cell(tr, age(w.queue.oldest_age_s));
    cell(tr, w.in_flight + " of " + w.in_flight_limit);
    cell(tr, w.last_error ? w.last_error.message : "");
    actions(tr, w);
    hooks.appendChild(tr);
  }
  const sources = document.getElementById("sources");
  sources.replaceChildren();
  for (const x of s.sources) {
    const tr = document.createElement("tr");
    cell(tr, x.name);
    cell(tr, x.connected ? "yes" : "no", x.connected ? "ok" : "bad");
    cell(tr, x.messages);
    cell(tr, x.decode_errors);
    cell(tr, age(x.last_message_age_s));
    cell(tr, x.last_error);
    sources.appendChild(tr);
  }
  const st = s.store;
  document.getElementById("store").textContent =
    (st.bytes / 1048576).toFixed(1) + " MiB of " + (st.max_bytes / 1048576).toFixed(0) +
    " MiB used; " + st.errors + " failed commits" + (st.ok ? "" : " (failing: " + text(st.last_error) + ")");
  const problems = document.getElementById("problems");
  problems.replaceChildren();
  for (const p of s.problems) {
    const li = document.createElement("li");
    li.textContent = p;
    problems.appendChild(li);
  }
}
const csrf = () => document.querySelector('meta[name="csrf"]').content;
// A control API call (the same code path as `roomhook webhook …`); says how it went.
async function act(method, path, what) {
  const out = document.getElementById("outcome");
  out.textContent = what + " …";
  try {
    const r = await fetch("/console" + path, {
      method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf() },
    });
    const body = await r.json();
    out.textContent = what + ": " + (r.ok ? summary(body) : (body.error || r.status));
    out.className = r.ok ? "ok" : "bad";
  } catch (e) {
    out.textContent = what + ": no answer from the gateway";
    out.className = "bad";
  }
  poll();
}
function summary(b) {
  if (b.test) {
    const t = b.test;
    return "HTTP " + text(t.status) + " in " + Number(t.latency_ms).toFixed(1) + " ms over " +
      text(t.tls_version) + "; certificate " + text(t.peer_subject) + " (issuer " + text(t.peer_issuer) +
      "), expires " + text(t.peer_not_after);
  }
  if (b.deleted !== undefined) return "deleted; " + b.discarded + " queued event(s) went with it";
  if (b.replayed !== undefined) return b.replayed + " dead letter(s) queued again";
  return "done";
}
function button(row, label, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onclick);
  row.appendChild(b);
}
function actions(tr, w) {
  const td = document.createElement("td");
  const n = encodeURIComponent(w.name);
  button(td, "Test", () => act("POST", "/v1/webhooks/" + n + "/test", "Test " + w.name));
  button(td, w.enabled ? "Disable" : "Enable", () =>
    act("POST", "/v1/webhooks/" + n + (w.enabled ? "/disable" : "/enable"), (w.enabled ? "Disable " : "Enable ") + w.name));
  if (w.queue.dead_letters > 0) {
    button(td, "Replay " + w.queue.dead_letters + " dead letter(s)", () =>
      act("POST", "/v1/webhooks/" + n + "/replay", "Replay " + w.name));
  }
  button(td, "Delete", () => {
    if (confirm("Delete " + w.name + "? " + w.queue.events + " queued event(s) go with it.")) {
      act("DELETE", "/v1/webhooks/" + n, "Delete " + w.name);
    }
  });
  tr.appendChild(td);
}
async function poll() {
  try {
    const r = await fetch("/console/state", { credentials: "same-origin" });
    if (r.status === 401) { location.href = "/"; return; }
    draw(await r.json());
  } catch (e) {
    document.getElementById("verdict").textContent = "no answer from the gateway";
  }
}
poll();
setInterval(poll, 3000);
