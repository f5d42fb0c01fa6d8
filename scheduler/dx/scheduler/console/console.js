// The Configure › DataExchange console: plain DOM, every value set as text (never as HTML).
"use strict";
const KEY = "dx-token";
const REFRESH_MS = 5000;
let timer = null;

function token() { return sessionStorage.getItem(KEY) || ""; }

function say(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = kind || "";
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, {
    headers: Object.assign({ "Authorization": "Bearer " + token() }, (options || {}).headers),
  }));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const body = await response.json(); message = body.error.code + ": " + body.error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : null; }

async function act(label, path, body) {
  try {
    const response = await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body || {}) });
    const doc = await response.json();
    say(label + (doc.status && doc.id ? ": run " + doc.id + " " + doc.status : ""), "ok");
    await refresh();
  } catch (e) { say(label + " failed: " + e.message, "error"); }
}

function requestId() { return self.crypto && crypto.randomUUID ? crypto.randomUUID() : undefined; }

function moduleRow(m) {
  const tr = document.createElement("tr");
  const path = "/api/v1/modules/" + encodeURIComponent(m.id);
  const last = m.last_run ? "#" + m.last_run.id + " " + m.last_run.status : null;
  tr.append(cell(m.id), cell(m.kind + (m.mode ? " / " + m.mode : "")), cell(m.paused ? "paused" : "active"),
            cell(when(m.next_fire)), cell(last, m.last_run ? "status-" + m.last_run.status : ""));
  const actions = document.createElement("td");
  actions.append(button("Run now", () => act("Run " + m.id, path + "/runs", { request_id: requestId() })),
                 m.paused ? button("Resume", () => act("Resumed " + m.id, path + "/resume"))
                          : button("Pause", () => act("Paused " + m.id, path + "/pause")));
  tr.append(actions);
  return tr;
}

async function download(run) {
  try {
    const blob = await (await api("/api/v1/runs/" + run.id + "/failures.csv")).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "run-" + run.id + "-failures.csv";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) { say("Download failed: " + e.message, "error"); }
}

function runRow(r) {
  const tr = document.createElement("tr");
  const failed = r.not_inserted + r.not_updated + r.not_deleted;
  tr.append(cell(r.id), cell(r.module), cell(r.trigger), cell(r.status, "status-" + r.status), cell(r.rows_read),
            cell(failed), cell(when(r.started_at)), cell(when(r.finished_at)));
  const actions = document.createElement("td");
  if (failed > 0) actions.append(button("failures.csv", () => download(r)));
  tr.append(actions);
  return tr;
}

async function refresh() {
  if (!token()) { say("Enter a token (dx token create --tenant T)."); return; }
  try {
    const modules = await (await api("/api/v1/modules")).json();
    const runs = await (await api("/api/v1/runs?limit=20")).json();
    document.getElementById("modules").replaceChildren(...modules.modules.map(moduleRow));
    document.getElementById("runs").replaceChildren(...runs.runs.map(runRow));
  } catch (e) { say(e.message, "error"); }
}

function start() {
  clearInterval(timer);
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(KEY, input.value.trim());
  input.value = "";
  say("");
  start();
});
document.getElementById("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  document.getElementById("modules").replaceChildren();
  document.getElementById("runs").replaceChildren();
  say("Token forgotten.");
});
start();
