// OMA dashboard: tables of appliances and VMs (refreshed every few seconds) and every job live, from the
// Server-Sent Events the OMA bridges from its watch streams. No build step, no dependencies.
// Messages are the gRPC API's own, in the proto3 JSON mapping: default values are left out, enums are names.
"use strict";

const jobs = new Map(); // job id -> { type: "replication" | "failover", job }
const openLogs = new Set(); // job ids whose log is shown
const vmNames = new Map();
let renderQueued = false;

const $ = (selector) => document.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};
const enumName = (value, prefix) => (value || `${prefix}_UNSPECIFIED`).slice(prefix.length + 1).toLowerCase();
const num = (value) => Number(value || 0);
const mib = (bytes) => `${(num(bytes) / 1048576).toFixed(1)} MiB`;
const ago = (iso) => {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} days ago`;
};
const duration = (text) => {
  if (!text) return "";
  const s = parseFloat(text);
  return s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`;
};
const badgeClass = (status) =>
  ({ completed: "ok", connected: "ok", ready_for_failover: "ok", failed: "bad", disconnected: "bad",
     stalled: "warn", cancelled: "warn", cleanup_required: "warn", replicating: "run", running: "run" })[status] || "";

// The OMA refused the session's token (revoked or expired): say so and offer the login page.
function loggedOut() {
  const live = $("#live");
  live.dataset.live = "down";
  live.textContent = "logged out";
  $("#problem").dataset.source = "auth";
  problem("The OMA no longer accepts this session's token (revoked or expired): log in again.");
  $("#problem").append(" ", el("a", { href: "/login", id: "login-again" }, "Log in"));
}

function problem(text) {
  const box = $("#problem");
  box.hidden = !text;
  box.textContent = text || "";
}

// ---- appliances and VMs ------------------------------------------------------------------------------------
async function refreshOverview() {
  try {
    const response = await fetch("/api/overview");
    if (response.status === 401) return loggedOut();
    if (!response.ok) throw new Error(`the OMA answered ${response.status} for /api/overview`);
    const data = await response.json();
    $("#server").textContent = `oma-server ${data.server.version} · ${data.server.database}`;
    const appliances = $("#appliances tbody");
    appliances.replaceChildren(...data.appliances.map((a) => {
      const state = enumName(a.connectionState, "CONNECTION_STATE");
      return el("tr", { "data-appliance-id": a.id },
        el("td", {}, a.name), el("td", {}, el("span", { class: `badge ${badgeClass(state)}`, "data-state": state }, state)),
        el("td", {}, ago(a.lastSeenAt)), el("td", { class: "dim" }, a.agentVersion || ""));
    }));
    const vms = $("#vms tbody");
    vms.replaceChildren(...data.vms.map((vm) => {
      vmNames.set(vm.id, vm.name);
      const status = enumName(vm.status, "VM_CONTEXT_STATUS");
      // the recovery point is the last completed and verified sync; a breach of the VM's RPO target says why
      const point = vm.rpo && vm.rpo.recoveryPoint;
      const breached = vm.rpo && enumName(vm.rpo.status, "RPO_STATUS") === "breached";
      const rpo = (point ? `${ago(point)} (${new Date(point).toLocaleString()})` : "none yet")
        + (breached ? ` — breached: ${vm.rpo.reason}` : "");
      return el("tr", { "data-vm-id": vm.id },
        el("td", {}, vm.name), el("td", {}, el("span", { class: `badge ${badgeClass(status)}` }, status)),
        el("td", {}, String((vm.disks || []).length)), el("td", { class: "rpo" }, rpo));
    }));
    if ($("#problem").dataset.source === "overview") problem("");
  } catch (error) {
    $("#problem").dataset.source = "overview";
    problem(`Cannot read the OMA's overview: ${error.message}`);
  }
  queueRender();
}

// ---- jobs ----------------------------------------------------------------------------------------------------
function bar(percent, state, label) {
  const shown = Math.max(0, Math.min(100, percent));
  // data-percent: whole percents, rounded at 0.1 first (a report of 60 % of an odd byte count is 59.99...)
  return el("div", { class: "bar", "data-percent": String(Math.floor(Math.round(shown * 10) / 10)), "data-state": state },
    el("div", { class: "fill", style: `width: ${shown}%` }), el("span", { class: "label" }, label));
}

function replicationCard(job) {
  const status = enumName(job.status, "REPLICATION_JOB_STATUS");
  const kind = enumName(job.kind, "REPLICATION_JOB_KIND");
  const percent = num(job.percent);
  const figures = [mib(job.bytesDone) + " / " + mib(job.bytesTotal)];
  if (num(job.throughputBytesPerSecond) && status === "replicating") figures.push(`${mib(job.throughputBytesPerSecond)}/s`);
  if (job.eta && status === "replicating") figures.push(`ETA ${duration(job.eta)}`);
  const disks = (job.disks || []).map((d) => {
    const done = num(d.bytesDone), total = num(d.bytesTotal);
    const diskPercent = d.completed ? 100 : total ? (100 * done) / total : 0;
    return el("div", { class: "disk", "data-disk-id": d.diskId },
      el("span", {}, `disk ${d.diskKey || "?"} · ${enumName(d.mode, "COPY_MODE")}`),
      bar(diskPercent, d.completed ? "completed" : status, `${diskPercent.toFixed(0)} % · ${mib(done)} / ${mib(total)}`));
  });
  return [
    el("div", { class: "head" },
      el("span", { class: "title" }, `${kind} replication of ${vmNames.get(job.vmContextId) || job.vmContextId}`),
      el("span", { class: `badge status ${badgeClass(status)}`, "data-status": status }, status),
      el("span", { class: "figures" }, figures.join(" · ")),
      el("span", { class: "dim" }, job.currentOperation || "")),
    el("div", { class: "job-bar" }, bar(percent, status, `${percent.toFixed(1)} %`)),
    ...disks,
    job.error ? el("div", { class: "error" }, `${job.error.reason || "FAILED"}: ${job.error.message || ""}`) : null,
  ];
}

function failoverCard(job) {
  const status = enumName(job.status, "FAILOVER_JOB_STATUS");
  const kind = enumName(job.kind, "FAILOVER_JOB_KIND");
  const steps = (job.steps || []).map((s) => {
    const stepStatus = enumName(s.status, "STEP_STATUS");
    return el("li", { "data-step": s.name, "data-status": stepStatus },
      `${s.name} `, el("span", { class: "dim" }, stepStatus),
      s.error ? el("span", { class: "step-error" }, s.error) : null);
  });
  return [
    el("div", { class: "head" },
      el("span", { class: "title" }, `${kind} failover of ${vmNames.get(job.vmContextId) || job.vmContextId}`),
      el("span", { class: `badge status ${badgeClass(status)}`, "data-status": status }, status),
      el("span", { class: "dim" }, job.targetVmName ? `target VM ${job.targetVmName}` : "")),
    el("ol", { class: "steps" }, ...steps),
    job.error ? el("div", { class: "error" }, `${job.error.reason || "FAILED"}: ${job.error.message || ""}`) : null,
  ];
}

function jobCard(id, entry) {
  const card = el("article", { class: "job", "data-job-id": id, "data-type": entry.type });
  const body = entry.type === "replication" ? replicationCard(entry.job) : failoverCard(entry.job);
  const toggle = el("button", { class: "log", type: "button" }, openLogs.has(id) ? "hide log" : "log");
  toggle.addEventListener("click", () => {
    if (openLogs.has(id)) openLogs.delete(id); else { openLogs.add(id); loadLog(id); }
    queueRender();
  });
  body[0].append(toggle);
  card.append(...body.filter(Boolean));
  if (openLogs.has(id)) card.append(entry.log || el("div", { class: "joblog dim" }, "loading…"));
  return card;
}

async function loadLog(id) {
  const entry = jobs.get(id);
  if (!entry) return;
  try {
    const response = await fetch(`/api/jobs/${encodeURIComponent(id)}/log`);
    const data = await response.json();
    if (!response.ok) throw new Error(`${data.reason}: ${data.message}`);
    entry.log = el("div", { class: "joblog" }, ...data.entries.map((e) => {
      const status = enumName(e.status, "JOB_LOG_STATUS");
      return el("div", { "data-status": status }, `${(e.startedAt || "").slice(11, 19)} ${e.step} [${status}] ${e.message || ""}`);
    }));
  } catch (error) {
    entry.log = el("div", { class: "joblog error" }, `Cannot read the job log: ${error.message}`);
  }
  queueRender();
}

function render() {
  renderQueued = false;
  const list = [...jobs.entries()].sort((a, b) => (b[1].job.createdAt || "").localeCompare(a[1].job.createdAt || ""));
  $("#no-jobs").hidden = list.length > 0;
  const container = $("#jobs");
  container.replaceChildren($("#no-jobs"), ...list.map(([id, entry]) => jobCard(id, entry)));
}

function queueRender() {
  if (!renderQueued) {
    renderQueued = true;
    requestAnimationFrame(render);
  }
}

// ---- live updates ----------------------------------------------------------------------------------------------
function connect() {
  const events = new EventSource("/api/events"); // reconnects by itself, sending Last-Event-ID (a watch revision)
  const live = $("#live");
  events.onopen = () => {
    live.dataset.live = "live";
    live.textContent = "live";
    if ($("#problem").dataset.source === "events") problem("");
  };
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) return loggedOut(); // refused (401), not a cut: no reconnect
    live.dataset.live = "down";
    live.textContent = "reconnecting…";
    $("#problem").dataset.source = "events";
    problem("Live updates from the OMA are interrupted; reconnecting (nothing is missed: the watch resumes).");
  };
  events.addEventListener("refused", () => { events.close(); loggedOut(); }); // the token was revoked or expired
  events.addEventListener("reset", () => jobs.clear()); // history compacted: a fresh snapshot follows
  events.addEventListener("update", (message) => {
    const update = JSON.parse(message.data);
    const job = update.replicationJob || update.failoverJob;
    if (job) {
      const known = jobs.get(job.id);
      jobs.set(job.id, { type: update.replicationJob ? "replication" : "failover", job, log: known && known.log });
      if (openLogs.has(job.id)) loadLog(job.id);
      queueRender();
    }
    if (update.kind === "UPDATE_KIND_SYNCED") document.body.dataset.synced = update.revision || "0";
  });
}

refreshOverview();
setInterval(refreshOverview, 3000);
connect();
