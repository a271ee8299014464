// sagalab console: live updates, the swimlane timeline (inline SVG) and operator actions.
// Plain DOM, no framework, no build step. Text from the database is only ever set through
// textContent or setAttribute (never innerHTML), so nothing it holds can run as script. The
// one innerHTML is the simulation charts, HTML the server escaped (ui/simcharts.py).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const token = document.querySelector('meta[name="csrf-token"]').content;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, title) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (title) {
    const t = document.createElementNS(SVG, "title");
    t.textContent = title;
    node.appendChild(t);
  }
  return node;
}

function when(at) {
  if (at === null || at === undefined) return "-";
  return new Date(at * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

async function post(url, body, type) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": type || "application/json", "X-CSRF-Token": token },
    body: typeof body === "string" ? body : JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await response.json(); } catch (e) { data = { detail: response.statusText }; }
  return { ok: response.ok, status: response.status, data };
}

// --- the saga list: rebuilt from /api/sagas every two seconds ---------------------------

function statusBadge(status) {
  return el("span", { class: "status " + status }, status);
}

function renderRows(tbody, items) {
  const rows = items.map((s) => {
    const tr = el("tr", { "data-id": s.id });
    const link = el("a", { href: "/sagas/" + encodeURIComponent(s.id) }, s.id);
    const cells = [link, s.flow, statusBadge(s.status), s.tenant, when(s.created_at),
      when(s.updated_at), s.reason || ""];
    cells.forEach((c, i) => {
      const td = el("td", i === 6 ? { class: "reason" } : {});
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    });
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr", { class: "empty" });
    tr.appendChild(el("td", { colspan: "7" }, "no saga matches"));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

function pollList(tbody) {
  const url = tbody.dataset.poll;
  const tick = async () => {
    try { renderRows(tbody, (await getJSON(url)).items); } catch (e) { /* next tick */ }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

// --- the timeline ----------------------------------------------------------------------

const LABEL_W = 190, LANE_H = 26, AXIS_H = 28, WIDTH = 960;

function barTitle(lane, bar) {
  const lines = [`${lane.label} attempt ${bar.attempt}: ${bar.outcome}`,
    `${bar.start.toFixed(3)} s → ${bar.end === null ? "…" : bar.end.toFixed(3) + " s"}`];
  if (bar.status_code) lines.push(`HTTP ${bar.status_code}`);
  if (bar.error) lines.push(`error: ${bar.error}`);
  if (bar.request) lines.push(`request: ${bar.request}`);
  if (bar.response) lines.push(`response: ${bar.response}`);
  return lines.join("\n");
}

function drawTimeline(box, data) {
  const span = Math.max(data.end, 0.001);
  const height = AXIS_H + LANE_H * data.lanes.length + 8;
  const x = (t) => LABEL_W + (Math.max(0, t) / span) * (WIDTH - LABEL_W - 12);
  const root = svg("svg", { width: WIDTH, height, viewBox: `0 0 ${WIDTH} ${height}`,
    class: "timeline", role: "img", "aria-label": "saga timeline" });
  for (let i = 0; i <= 4; i++) {  // the one time axis, in seconds since the saga was created
    const t = (span * i) / 4;
    root.appendChild(svg("line", { x1: x(t), x2: x(t), y1: AXIS_H - 6, y2: height, class: "grid" }));
    const label = svg("text", { x: i === 4 ? x(t) - 2 : x(t) + 2, y: 14, class: "tick",
      "text-anchor": i === 4 ? "end" : "start" });
    label.textContent = `${t.toFixed(t < 10 ? 2 : 1)} s`;
    root.appendChild(label);
  }
  data.lanes.forEach((lane, i) => {
    const y = AXIS_H + i * LANE_H;
    const g = svg("g", { class: "lane " + lane.kind, "data-lane": lane.id, "data-kind": lane.kind,
      "data-pivot": lane.pivot ? "yes" : "no" });
    g.appendChild(svg("rect", { x: 0, y, width: WIDTH, height: LANE_H, class: "lane-bg" }));
    const name = svg("text", { x: 6, y: y + 17, class: "lane-label" });
    name.textContent = (lane.pivot ? "◆ " : "") + lane.label + (lane.pivot ? " (pivot)" : "");
    g.appendChild(name);
    for (const wait of lane.waits || []) {
      const title = "retry wait until " + wait.end.toFixed(3) + " s" +
        (wait.retry_after ? ` (Retry-After ${wait.retry_after} s)` : "");
      g.appendChild(svg("rect", { x: x(wait.start), y: y + 9, height: 8, class: "wait",
        width: Math.max(x(wait.end) - x(wait.start), 2) }, title));
    }
    for (const bar of lane.bars || []) {
      const end = bar.end === null ? span : bar.end;
      g.appendChild(svg("rect", { x: x(bar.start), y: y + 4, height: LANE_H - 8,
        width: Math.max(x(end) - x(bar.start), 3), class: "bar " + bar.outcome,
        "data-outcome": bar.outcome }, barTitle(lane, bar)));
    }
    for (const seg of lane.segments || []) {
      g.appendChild(svg("rect", { x: x(seg.start), y: y + 6, height: LANE_H - 12,
        width: Math.max(x(seg.end) - x(seg.start), 2), class: "breaker " + seg.state,
        "data-state": seg.state }, `${lane.label}: ${seg.state} from ${seg.start.toFixed(3)} s`));
    }
    root.appendChild(g);
  });
  for (const m of data.markers) {
    if (m.kind === "created") continue;
    const mx = x(m.at);
    let shape;  // ▲ a takeover, ◆ an operator's request, ● the saga's own milestones
    if (m.kind === "takeover") {
      shape = svg("path", { d: `M${mx - 6},${AXIS_H - 2} L${mx + 6},${AXIS_H - 2} L${mx},${AXIS_H - 12} Z` });
    } else if (m.kind === "operator") {
      shape = svg("path", { d: `M${mx},${AXIS_H - 14} L${mx + 6},${AXIS_H - 7} L${mx},${AXIS_H} L${mx - 6},${AXIS_H - 7} Z` });
    } else {
      shape = svg("circle", { cx: mx, cy: AXIS_H - 6, r: 4 });
    }
    const g = svg("g", { class: "marker " + m.kind, "data-kind": m.kind }, `${m.label} at ${m.at.toFixed(3)} s`);
    g.appendChild(svg("line", { x1: mx, x2: mx, y1: AXIS_H, y2: height, class: "marker-line" }));
    g.appendChild(shape);
    root.appendChild(g);
  }
  box.replaceChildren(root);
}

function pollTimeline(box) {
  const status = document.getElementById("saga-status");
  const tick = async () => {
    let data;
    try { data = await getJSON(box.dataset.src); } catch (e) { setTimeout(tick, 2000); return; }
    drawTimeline(box, data);
    box.dataset.status = data.status;
    status.textContent = data.status;
    status.className = "status " + data.status;
    document.getElementById("saga-reason").textContent = data.reason || "-";
    document.getElementById("saga-updated").textContent = data.updated;
    if (data.active) setTimeout(tick, 1000);
  };
  box.refresh = tick;
  tick();
}

// --- operator actions (only on a console started with --allow-actions) ----------------

function setupActions(box) {
  const result = document.getElementById("action-result");
  const sagaId = box.dataset.src.split("/")[3];
  const base = `/api/sagas/${sagaId}/actions/`;
  const step = () => document.getElementById("action-step").value;
  const reason = () => document.getElementById("action-reason").value;
  const show = (answer) => {
    result.textContent = answer.ok ? answer.data.message : `refused (${answer.status}): ${answer.data.detail}`;
    result.className = answer.ok ? "ok" : "bad";
    if (box.refresh) box.refresh();
  };
  const planBox = document.getElementById("fork-plan");
  for (const button of document.querySelectorAll("button.action")) {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      if (action === "fork") {  // the plan first; nothing is written until it is confirmed
        const answer = await post(base + "fork", { step: step(), dry_run: true });
        if (!answer.ok) { show(answer); return; }
        document.getElementById("fork-plan-text").textContent = JSON.stringify(answer.data.plan, null, 2);
        planBox.hidden = false;
        return;
      }
      show(await post(base + action, { step: step(), reason: reason() }));
    });
  }
  document.getElementById("fork-confirm").addEventListener("click", async () => {
    planBox.hidden = true;
    const answer = await post(base + "fork", { step: step() });
    show(answer);
    if (answer.ok) {
      const link = el("a", { href: "/sagas/" + encodeURIComponent(answer.data.saga_id) }, " open the fork");
      result.appendChild(link);
    }
  });
  document.getElementById("fork-cancel").addEventListener("click", () => { planBox.hidden = true; });
}

// --- simulation reports ----------------------------------------------------------------

function setupSimulations(input) {
  const out = document.getElementById("sim-charts");
  input.addEventListener("change", async () => {
    out.replaceChildren();
    for (const file of input.files) {
      const answer = await post("/api/simulations", await file.text(), "text/plain");
      const section = el("div", { class: "sim-file" });
      section.appendChild(el("h2", {}, file.name));
      const charts = el("div");
      if (answer.ok) charts.innerHTML = answer.data.html;  // escaped by the server
      else charts.appendChild(el("p", { class: "error" }, answer.data.detail));
      section.appendChild(charts);
      out.appendChild(section);
    }
  });
}

const rows = document.getElementById("saga-rows");
if (rows) pollList(rows);
const timeline = document.getElementById("timeline");
if (timeline) {
  pollTimeline(timeline);
  if (document.body.dataset.actions === "on" && document.getElementById("action-result")) setupActions(timeline);
}
const simFile = document.getElementById("sim-file");
if (simFile) setupSimulations(simFile);
