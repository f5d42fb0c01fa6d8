// The Configure › DataExchange console: plain DOM, every value set as text (never as HTML).
// Signed in with a session cookie; each change sends the session's CSRF token. The server checks
// the role of every change: the buttons a viewer does not see would be refused anyway.
"use strict";

const WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const STATUSES = ["queued", "running", "completed", "completed_with_errors", "failed", "skipped", "timed_out",
                  "aborted"];
const TRIGGERS = ["schedule", "manual", "http", "amqp"];
const TERMINAL = new Set(["completed", "completed_with_errors", "failed", "skipped", "timed_out", "aborted"]);
const REFRESH_MS = 1000;
let me = null;
let timer = null;

class Failure extends Error {
  constructor(status, code, message, details) { super(message); this.status = status; this.code = code; this.details = details || []; }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") { for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn); }
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Appends like el() does: nulls left out, arrays flattened (the DOM's own append would write "null").
function fill(page, ...children) { page.append(el("div", {}, ...children)); }

function say(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text || "";
  box.className = kind || "";
}

async function api(path, options) {
  const opts = options || {};
  const headers = { "Accept": "application/json" };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  if (me && opts.method && opts.method !== "GET") headers["X-CSRF-Token"] = me.csrf;
  const response = await fetch(path, { method: opts.method || "GET", headers, credentials: "same-origin",
                                       body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  if (response.status === 204) return null;
  let doc = null;
  try { doc = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const err = (doc && doc.error) || { code: String(response.status), message: response.statusText };
    if (response.status === 401 && !opts.signingIn) { me = null; location.hash = "#/sign-in"; }
    throw new Failure(response.status, err.code, err.message, err.details);
  }
  return doc;
}

function confirmed(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => { dialog.close(); ok.removeEventListener("click", yes); cancel.removeEventListener("click", no); resolve(answer); };
    const ok = document.getElementById("confirm-ok"), cancel = document.getElementById("confirm-cancel");
    const yes = () => done(true), no = () => done(false);
    ok.addEventListener("click", yes);
    cancel.addEventListener("click", no);
    dialog.showModal();
  });
}

// A time as the server wrote it (ISO with the zone's offset), shown in that zone: no conversion.
function wallClock(iso) { return iso ? iso.replace("T", " ").slice(0, 16) : "-"; }
function local(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }
function statusCell(status) { return el("span", { class: "status-" + status }, status.replaceAll("_", " ")); }
function runLink(id) { return el("a", { href: "#/runs/" + id }, "#" + id); }
function codeLink(code) { return el("a", { href: "/error-codes#" + code, target: "_blank" }, code); }
function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0, v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return (i ? v.toFixed(1) : v) + " " + units[i];
}
function mod(id) { return "/api/v1/modules/" + encodeURIComponent(id); }

async function act(label, path, body) {
  try {
    const doc = await api(path, { method: "POST", body: body || {} });
    say(label + (doc && doc.id && doc.status ? ": run " + doc.id + " " + doc.status : ""), "ok");
    return doc;
  } catch (e) { say(label + " failed: " + e.code + ": " + e.message, "error"); return null; }
}

function actions(m, after) {
  if (!me || me.role !== "operator") return [];
  const run = el("button", { type: "button", on: { click: async () => {
    if (!await confirmed("Run " + m.id + " now?")) return;
    const doc = await act("Run now", mod(m.id) + "/runs", { request_id: crypto.randomUUID() });
    if (doc) location.hash = "#/runs/" + doc.id;
  } } }, "Run now");
  const verb = m.paused ? "Resume" : "Pause";
  const toggle = el("button", { type: "button", on: { click: async () => {
    if (!await confirmed(verb + " the schedule of " + m.id + "?")) return;
    if (await act(verb, mod(m.id) + "/" + verb.toLowerCase())) after();
  } } }, verb);
  return [run, toggle];
}

// ---- pages

function signInPage(page) {
  const user = el("input", { id: "username", type: "text", autocomplete: "username", required: true });
  const pass = el("input", { id: "password", type: "password", autocomplete: "current-password", required: true });
  const form = el("form", { class: "signin" }, el("h2", {}, "Sign in"),
    el("label", { for: "username" }, "Username"), user, el("label", { for: "password" }, "Password"), pass,
    el("p", {}, el("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      me = await api("/console/session", { method: "POST", body: { username: user.value, password: pass.value },
                                           signingIn: true });
      say("");
      location.hash = "#/";
    } catch (e) { say(e.code + ": " + e.message, "error"); }
  });
  page.append(form);
}

async function modulesPage(page) {
  const doc = await api("/api/v1/modules");
  const rows = doc.modules.map((m) => el("tr", { "data-module": m.id },
    el("td", {}, el("a", { href: "#/modules/" + encodeURIComponent(m.id) }, m.id)),
    el("td", {}, m.kind + (m.mode ? " / " + m.mode : "")),
    el("td", {}, m.paused ? "paused" : "active"),
    el("td", {}, m.next_fire ? wallClock(m.next_fire) + " " + m.timezone : "-"),
    el("td", {}, m.last_run ? [runLink(m.last_run.id), " ", statusCell(m.last_run.status)] : "-"),
    el("td", {}, actions(m, render))));
  fill(page, el("h2", {}, "Modules"), el("table", { id: "modules" },
    el("thead", {}, el("tr", {}, ["Module", "Kind", "State", "Next fire", "Last run", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

function describe(value) {
  if (value === null || value === undefined) return "-";
  if (Array.isArray(value)) return value.map(describe).join(", ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => k + ": " + describe(v)).join("\n");
  return String(value);
}

function configuration(m) {
  const c = m.config;
  const side = c.source ? "source" : "target";
  const items = [["Kind", c.kind + (c.mode ? " (" + c.mode + ")" : "")], ["Database", c.database]];
  const io = c[side] || {};
  items.push([side === "source" ? "Source" : "Target", (io.connection || "") + (io.path ? ": " + io.path : "")]);
  for (const key of ["format", "delimiter", "encoding", "compression", "query", "table", "after", "files"]) {
    if (io[key] !== undefined && io[key] !== null) items.push([key[0].toUpperCase() + key.slice(1), describe(io[key])]);
  }
  if (io.columns) items.push(["Field mapping", describe(io.columns)]);
  if (c.fields) items.push(["Fields", describe(c.fields)]);
  return el("dl", { id: "configuration" }, items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function scheduleEditor(m, zones) {
  const s = m.config.schedule || { times: [], weekdays: [], months: [] };
  const byCron = !!s.cron;
  const mode = (value, label) => el("label", {}, el("input", { type: "radio", name: "form", value, checked: (value === "cron") === byCron }), " " + label);
  const errorOf = (name) => el("span", { class: "field-error", "data-error": name });
  const checks = (name, values, chosen) => el("span", { id: "sched-" + name },
    values.map((v, i) => el("label", {}, el("input", { type: "checkbox", value: name === "months" ? i + 1 : v,
      checked: (chosen || []).map(String).includes(String(name === "months" ? i + 1 : v)) || (chosen || []).includes(v) }), " " + v)));
  const times = el("input", { id: "sched-times", type: "text", size: 30, placeholder: "08:00, 17:00", value: (s.times || []).join(", ") });
  const cron = el("textarea", { id: "sched-cron", rows: 3, placeholder: "0 8 * * mon-fri" }, (s.cron || []).join("\n"));
  const start = el("input", { id: "sched-start", type: "date", value: s.start || "" });
  const end = el("input", { id: "sched-end", type: "date", value: s.end || "" });
  const zone = el("input", { id: "sched-timezone", type: "text", list: "zones", size: 24, value: s.timezone || "", placeholder: m.timezone || "UTC" });
  const fires = el("ol", { id: "preview", class: "fires" });
  const zoneLabel = el("span", { id: "preview-zone", class: "muted" });
  const form = el("form", { id: "schedule" },
    el("fieldset", {}, el("legend", {}, "Schedule"),
      el("p", {}, mode("times", "Times of day"), mode("cron", "Cron lines")),
      el("div", { id: "by-times" },
        el("p", {}, el("label", { for: "sched-times" }, "Times of day"), times, errorOf("times")),
        el("p", {}, "Weekdays (none: every day) ", checks("weekdays", WEEKDAYS, s.weekdays), errorOf("weekdays")),
        el("p", {}, "Months (none: every month) ", checks("months", MONTHS, s.months), errorOf("months"))),
      el("div", { id: "by-cron" }, el("p", {}, el("label", { for: "sched-cron" }, "Cron lines, one a line"), cron, errorOf("cron"))),
      el("p", {}, el("label", { for: "sched-start" }, "Start"), start, errorOf("start"),
                 el("label", { for: "sched-end" }, " End"), end, errorOf("end")),
      el("p", {}, el("label", { for: "sched-timezone" }, "Time zone"), zone, errorOf("timezone")),
      el("datalist", { id: "zones" }, zones.map((z) => el("option", { value: z }))),
      el("p", {}, errorOf("")),
      el("h3", {}, "Next 10 fire times ", zoneLabel), fires,
      me.role === "operator" ? el("button", { type: "submit", id: "save-schedule" }, "Save schedule") : null));
  const draft = () => {
    const form_ = form.querySelector("input[name=form]:checked").value;
    const picked = (name) => [...form.querySelectorAll("#sched-" + name + " input:checked")].map((i) => name === "months" ? Number(i.value) : i.value);
    const out = {};
    if (form_ === "cron") out.cron = cron.value.split("\n").map((l) => l.trim()).filter(Boolean);
    else {
      out.times = times.value.split(",").map((t) => t.trim()).filter(Boolean);
      out.weekdays = picked("weekdays");
      out.months = picked("months");
    }
    if (zone.value.trim()) out.timezone = zone.value.trim();
    if (start.value) out.start = start.value;
    if (end.value) out.end = end.value;
    for (const key of ["overlap", "misfire_grace_s", "max_failures"]) if (s[key] !== undefined && s[key] !== null) out[key] = s[key];
    return out;
  };
  const showErrors = (details) => {
    form.querySelectorAll("[data-error]").forEach((span) => { span.textContent = ""; });
    for (const d of details) {
      const name = d.field.replace(/^body\./, "").replace(/^schedule\.?/, "").split(".")[0];
      const span = form.querySelector('[data-error="' + name + '"]') || form.querySelector('[data-error=""]');
      span.textContent += (span.textContent ? "; " : "") + d.message;
    }
  };
  const toggle = () => {
    const byCronNow = form.querySelector("input[name=form]:checked").value === "cron";
    form.querySelector("#by-cron").hidden = !byCronNow;
    form.querySelector("#by-times").hidden = byCronNow;
  };
  let pending = null;
  const preview = async () => {
    try {
      const doc = await api(mod(m.id) + "/schedule/preview", { method: "POST", body: { schedule: draft() } });
      showErrors([]);
      fires.replaceChildren(...doc.fires.map((f) => el("li", {}, wallClock(f))));
      zoneLabel.textContent = "(" + doc.timezone + ")";
    } catch (e) {
      fires.replaceChildren();
      showErrors(e.details.length ? e.details : [{ field: "", message: e.message }]);
    }
  };
  form.addEventListener("input", () => { toggle(); clearTimeout(pending); pending = setTimeout(preview, 250); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(mod(m.id) + "/schedule", { method: "PUT", body: { schedule: draft() } });
      say("Schedule saved", "ok");
    } catch (e) {
      showErrors(e.details.length ? e.details : [{ field: "", message: e.message }]);
      say("Schedule not saved: " + e.code + ": " + e.message, "error");
    }
  });
  toggle();
  preview();
  return form;
}

function notifications(m) {
  const list = el("textarea", { id: "notify", rows: 3 }, (m.config.notify || []).join("\n"));
  const policy = el("select", { id: "notify-on" }, [["always", "every run"], ["errors", "runs with errors"],
    ["failures", "failed runs only"]].map(([v, label]) => el("option", { value: v, selected: (m.config.notify_on || "always") === v }, label)));
  const error = el("span", { class: "field-error" });
  const form = el("form", { id: "notifications" }, el("fieldset", {}, el("legend", {}, "Report e-mails"),
    el("p", {}, el("label", { for: "notify" }, "Recipients, one a line (the tenant's get them too)"), list),
    el("p", {}, el("label", { for: "notify-on" }, "Send for"), policy), error,
    me.role === "operator" ? el("button", { type: "submit" }, "Save recipients") : null));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(mod(m.id) + "/notifications", { method: "PUT", body: {
        notify: list.value.split("\n").map((a) => a.trim()).filter(Boolean), notify_on: policy.value } });
      error.textContent = "";
      say("Recipients saved", "ok");
    } catch (e) { error.textContent = e.message; say("Recipients not saved: " + e.code, "error"); }
  });
  return form;
}

function checks(m) {
  const out = el("div", { id: "check-result" });
  const run = (kind, label) => el("button", { type: "button", id: "check-" + kind, on: { click: async () => {
    out.replaceChildren(el("p", { class: "muted" }, label + "…"));
    try {
      const r = await api(mod(m.id) + "/checks/" + kind, { method: "POST", body: {} });
      const head = el("p", { class: r.ok ? "ok" : "error" }, r.ok ? r.message : [codeLink(r.code), ": ", r.message]);
      const files = r.files.length ? el("table", { id: "check-files" }, el("tbody", {}, r.files.map((f) => el("tr", {},
        el("td", {}, f.path), el("td", { class: "number" }, bytes(f.size_bytes)),
        el("td", {}, local(new Date(f.mtime * 1000).toISOString())), el("td", {}, f.imported ? "imported already" : "waiting"))))) : null;
      const records = r.records.length ? el("table", { id: "check-records" },
        el("thead", {}, el("tr", {}, ["Row", ...r.columns, "Would fail with"].map((h) => el("th", {}, h)))),
        el("tbody", {}, r.records.map((x) => el("tr", { "data-row": x.row }, el("td", {}, x.row),
          r.columns.map((c) => el("td", {}, x.values[c] === null || x.values[c] === undefined ? "" : x.values[c])),
          el("td", {}, x.code ? [codeLink(x.code), " ", x.message || ""] : "-"))))) : null;
      out.replaceChildren(head, files, records);
    } catch (e) { out.replaceChildren(el("p", { class: "error" }, e.code + ": " + e.message)); }
  } } }, label);
  return el("fieldset", { id: "checks" }, el("legend", {}, "Check before running (nothing is written)"),
    run("connection", "Test connection"), m.config.source && m.config.source.path ? run("preview", "Preview") : null, out);
}

async function modulePage(page, id) {
  const [m, runs, audit] = await Promise.all([api(mod(id)), api("/api/v1/runs?limit=10&module=" + encodeURIComponent(id)),
                                              api(mod(id) + "/audit")]);
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  fill(page,
    el("h2", {}, "Module ", el("span", { id: "module-id" }, m.id)),
    el("p", {}, el("span", { id: "module-state" }, m.paused ? "paused" : "active"), " · next fire ",
       el("span", { id: "next-fire" }, m.next_fire ? wallClock(m.next_fire) + " " + m.timezone : "-"), " ",
       actions(m, render)),
    el("h3", {}, "Configuration"), configuration(m), checks(m),
    scheduleEditor(m, zones), notifications(m),
    el("h3", {}, "Latest runs ", el("a", { href: "#/runs?module=" + encodeURIComponent(id) }, "(all)")),
    runsTable(runs.runs),
    el("h3", {}, "Changes made in the console"),
    audit.entries.length ? el("table", {}, el("tbody", {}, audit.entries.map((a) => el("tr", {},
      el("td", {}, local(a.at)), el("td", {}, a.actor), el("td", {}, a.action),
      el("td", {}, describe(a.before)), el("td", {}, describe(a.after)))))) : el("p", { class: "muted" }, "none"));
}

function runsTable(runs) {
  return el("table", { class: "runs" },
    el("thead", {}, el("tr", {}, ["Run", "Module", "Trigger", "Status", "Read", "Failed", "Started", "Finished"].map((h) => el("th", {}, h)))),
    el("tbody", {}, runs.map((r) => el("tr", {}, el("td", {}, runLink(r.id)), el("td", {}, r.module),
      el("td", {}, r.trigger), el("td", {}, statusCell(r.status)), el("td", { class: "number" }, r.rows_read),
      el("td", { class: "number" }, r.not_inserted + r.not_updated + r.not_deleted),
      el("td", {}, local(r.started_at)), el("td", {}, local(r.finished_at))))));
}

async function runsPage(page, query) {
  const params = new URLSearchParams(query);
  const modules = (await api("/api/v1/modules")).modules;
  const select = (name, values) => el("select", { name, id: "filter-" + name }, el("option", { value: "" }, "any"),
    values.map((v) => el("option", { value: v, selected: params.get(name) === v }, v)));
  const since = el("input", { type: "date", name: "since", id: "filter-since", value: (params.get("since") || "").slice(0, 10) });
  const form = el("form", { id: "filters" }, el("label", {}, "Module ", select("module", modules.map((m) => m.id))),
    el("label", {}, "Status ", select("status", STATUSES)), el("label", {}, "Trigger ", select("trigger", TRIGGERS)),
    el("label", {}, "Since ", since), el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of ["module", "status", "trigger"]) if (form.elements[name].value) next.set(name, form.elements[name].value);
    if (since.value) next.set("since", since.value + "T00:00:00Z");
    location.hash = "#/runs?" + next.toString();
  });
  const list = el("div", {});
  const more = el("button", { type: "button", id: "older" }, "Older runs");
  let before = null;
  const load = async () => {
    const q = new URLSearchParams(params);
    q.set("limit", "20");
    if (before) q.set("before", before);
    const doc = await api("/api/v1/runs?" + q.toString());
    list.append(runsTable(doc.runs));
    before = doc.next_before;
    more.hidden = !before;
  };
  more.addEventListener("click", load);
  fill(page, el("h2", {}, "Runs"), form, list, more);
  await load();
}

async function runPage(page, id, download) {
  const run = await api("/api/v1/runs/" + id);
  const failed = run.not_inserted + run.not_updated + run.not_deleted;
  const duration = run.started_at && run.finished_at ? ((new Date(run.finished_at) - new Date(run.started_at)) / 1000).toFixed(1) + " s" : "-";
  const progress = run.n_chunks ? [el("progress", { id: "progress", max: run.n_chunks, value: run.chunks_done }),
    " ", el("span", { id: "progress-text" }, run.chunks_done + " of " + run.n_chunks + " chunks, " + run.rows_so_far.toLocaleString() + " records read")]
    : [el("span", { id: "progress-text" }, run.status === "queued" ? "waiting for a worker" : "planning")];
  const counters = ["rows_read", "inserted", "updated", "deleted", "not_inserted", "not_updated", "not_deleted", "rows_exported"];
  fill(page,
    el("h2", {}, "Run ", el("span", { id: "run-id" }, run.id), " of ",
       el("a", { href: "#/modules/" + encodeURIComponent(run.module) }, run.module)),
    el("p", { id: "run-status" }, statusCell(run.status)),
    TERMINAL.has(run.status) ? null : el("p", {}, progress),
    run.error_code ? el("div", { id: "run-error" }, el("p", {}, codeLink(run.error_code), ": ", run.error_message || ""),
                                                 el("p", { class: "muted" }, run.meanings[run.error_code] || "")) : null,
    el("dl", { id: "run-facts" },
      el("dt", {}, "Trigger"), el("dd", {}, run.trigger + (run.requested_by ? " by " + run.requested_by : "")),
      el("dt", {}, "Source file"), el("dd", {}, run.source_path ? run.source_path + " (" + bytes(run.source_bytes) + ")" : "-"),
      run.export ? [el("dt", {}, "Target file"), el("dd", { id: "target" }, run.export.target_path + " (" + bytes(run.export.bytes) + ", "
        + run.rows_exported.toLocaleString() + " rows" + (run.export.manifest ? ", with its manifest" : "") + ")")] : null,
      el("dt", {}, "Created"), el("dd", {}, local(run.created_at)),
      el("dt", {}, "Started"), el("dd", {}, local(run.started_at)),
      el("dt", {}, "Finished"), el("dd", {}, local(run.finished_at)),
      el("dt", {}, "Duration"), el("dd", {}, duration)),
    el("h3", {}, "Counters"),
    el("table", { id: "counters" }, el("tbody", {}, counters.map((c) => el("tr", {}, el("th", {}, c.replaceAll("_", " ")),
      el("td", { class: "number", "data-counter": c }, run[c]))))),
    run.warnings.length ? [el("h3", {}, "Warnings"), el("ul", { id: "warnings" }, run.warnings.map((w) => el("li", {},
      codeLink(w.code), ": ", w.message, el("span", { class: "muted" }, " — " + (run.meanings[w.code] || "")))))] : null,
    el("h3", {}, "Failed operations"),
    failed ? [el("table", { id: "errors" }, el("thead", {}, el("tr", {}, ["Code", "Count", "Meaning"].map((h) => el("th", {}, h)))),
      el("tbody", {}, Object.entries(run.errors).map(([code, n]) => el("tr", {}, el("td", {}, codeLink(code)),
        el("td", { class: "number" }, n), el("td", {}, run.meanings[code] || ""))))),
      el("p", {}, el("a", { id: "failures", href: run.failures_url, download: "run-" + run.id + "-failures.csv" },
        "Download the failed operations: failures.csv (" + failed.toLocaleString() + " records)"))]
      : el("p", { class: "muted" }, "none"));
  // the e-mail's link to the failures: clicked once the page is shown
  if (download && failed) setTimeout(() => document.getElementById("failures").click(), 0);
  else if (!TERMINAL.has(run.status)) timer = setTimeout(render, REFRESH_MS);
}

// ---- routing

async function render() {
  clearTimeout(timer);
  const page = document.getElementById("page");
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  if (!me && path !== "/sign-in") {
    try { me = await api("/console/session", { signingIn: true }); } catch (e) { location.hash = "#/sign-in"; return; }
  }
  document.getElementById("nav").hidden = !me;
  document.getElementById("who").textContent = me ? me.username + " (" + me.role + ", " + me.tenant + ")" : "";
  const fresh = document.createElement("main");
  fresh.id = "page";
  try {
    let match;
    if (path === "/sign-in") signInPage(fresh);
    else if ((match = path.match(/^\/modules\/(.+)$/))) await modulePage(fresh, decodeURIComponent(match[1]));
    else if ((match = path.match(/^\/runs\/(\d+)(\/failures)?$/))) await runPage(fresh, match[1], !!match[2]);
    else if (path === "/runs") await runsPage(fresh, query || "");
    else await modulesPage(fresh);
  } catch (e) {
    fresh.append(el("p", { class: "error", id: "page-error" }, e.code ? e.code + ": " + e.message : String(e)));
  }
  page.replaceWith(fresh);
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await api("/console/session", { method: "DELETE" }); } catch (e) { /* already ended */ }
  me = null;
  location.hash = "#/sign-in";
});
window.addEventListener("hashchange", () => { say(""); render(); });
render();
