// amc-service page: plain JS, no external library. Every request carries the API token (kept in
// localStorage; a "#token=..." fragment, as scripts/serve.sh prints, sets it without reaching the server).
"use strict";
const $ = (id) => document.getElementById(id);
let token = localStorage.getItem("amc-token") || "";
let timer = null;

function takeTokenFromHash() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { token = decodeURIComponent(m[1]); localStorage.setItem("amc-token", token); location.hash = "#/"; }
}

async function api(path, opts = {}) {
  opts.headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).detail || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}
const json = async (path, opts) => (await api(path, opts)).json();

function showError(e) { const el = $("error"); el.textContent = e ? String(e.message || e) : ""; el.hidden = !e; }
function fmt(v, d = 3) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
function secs(s) { if (s === null || s === undefined) return "–"; s = Math.round(s); return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`; }
function size(n) {  // bytes in binary units, as report.md writes them
  for (const [unit, scale] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) if (n >= scale) return `${(n / scale).toFixed(1)} ${unit}`;
  return `${n} B`;
}
// "sensitivity 12/25, ETA 1 min 20 s", "trial 3/8, best 0.712, ETA 4 min 0 s": the count of the stage's units
// (p.unit: what amc.progress.parse read from the stage's last counted message; the search's trials outside
// a counted stage) and the ETA
function counted(p) {
  const parts = [];
  if (p.stage_total) parts.push(`${p.unit} ${p.stage_done}/${p.stage_total}`);  // the stage's own count
  else if (p.total) parts.push(`trials ${p.done}/${p.total}`);  // the search's, once past it
  if (p.best !== null && p.best !== undefined) parts.push(`best ${fmt(p.best)}`);
  if (p.eta_s !== null && p.eta_s !== undefined) parts.push(`ETA ${secs(p.eta_s)}`);
  return parts.join(", ");
}
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }

// ---------------------------------------------------------------------------------- job list + form
// The form's option inputs are built from GET /api/v1/options (the job's JSON schema: types, defaults,
// bounds, descriptions, and the registries' current names as the enum of method and criterion), so an
// option or a searcher added to the project shows up here with no edit. The headline options go on the
// first line, the rest under "more options"; checkpoint, upload and data are the service's own inputs.
const MAIN = ["model", "budget", "method", "episodes", "finetune_epochs"];
const OWN = ["checkpoint", "upload", "data"];
let schema = null;

function leaf(prop) {  // an optional field's non-null type, with the field's own default and help
  const inner = prop.anyOf ? prop.anyOf.find((p) => p.type !== "null") || {} : {};
  return Object.assign({}, inner, prop);
}

function optionInput(name, prop) {
  const p = leaf(prop), dflt = p.default, none = dflt === null || dflt === undefined;
  let input;
  if (p.enum) {
    const help = p.enum_descriptions || {};
    input = `<select name="${name}">${none ? '<option value="">(default)</option>' : ""}` +
      p.enum.map((v) => `<option ${v === dflt ? "selected" : ""} title="${esc(help[v] || "")}">${esc(v)}</option>`).join("") +
      "</select>";
  } else if (p.type === "boolean") {
    input = `<input name="${name}" type="checkbox" ${dflt ? "checked" : ""}>`;
  } else if (p.type === "integer" || p.type === "number") {
    const bounds = (p.minimum !== undefined ? ` min="${p.minimum}"` : "") + (p.maximum !== undefined ? ` max="${p.maximum}"` : "");
    input = `<input name="${name}" type="number"${bounds}${p.type === "number" ? ' step="any"' : ""} ` +
      (none ? 'placeholder="default" size="8"' : `value="${dflt}"`) + ">";
  } else if (p.type === "array") {
    input = `<input name="${name}" value="${esc((dflt || []).join(", "))}" size="14">`;
  } else {
    input = `<input name="${name}" ${none ? 'placeholder="default"' : `value="${esc(dflt)}"`} size="12"` +
      (name === "budget" ? ' list="budget-kinds" required' : "") + ">";
  }
  return `<label title="${esc(p.description || "")}">${esc(name.replace(/_/g, " "))} ${input}</label>`;
}

function buildForm(reg) {
  const names = Object.keys(schema.properties).filter((n) => !OWN.includes(n));
  $("f-main").innerHTML = MAIN.filter((n) => names.includes(n)).map((n) => optionInput(n, schema.properties[n])).join(" ");
  $("f-options").innerHTML = names.filter((n) => !MAIN.includes(n)).map((n) => optionInput(n, schema.properties[n])).join(" ");
  $("budget-kinds").innerHTML = reg.budget_kinds.map((k) => `<option value="${esc(k)}=0.5">`).join("");
}

function readOptions(form) {  // the form's options as JSON values of their schema types
  const spec = {};
  for (const [name, prop] of Object.entries(schema.properties)) {
    const el = form.elements[name], p = leaf(prop);
    if (OWN.includes(name) || !el) continue;
    if (p.type === "boolean") { spec[name] = el.checked; continue; }
    const v = el.value.trim();
    if (v === "") continue;
    if (p.type === "integer") spec[name] = parseInt(v, 10);
    else if (p.type === "number") spec[name] = parseFloat(v);
    else if (p.type === "array") spec[name] = v.split(",").map((x) => x.trim()).filter((x) => x)
      .map((x) => (p.items && ["number", "integer"].includes(p.items.type) ? Number(x) : x));
    else spec[name] = v;
  }
  return spec;
}

async function loadRegistry() {
  const reg = await json("/api/v1/registry");
  $("f-checkpoint").innerHTML = '<option value="">(upload)</option>' +
    reg.checkpoints.map((c) => `<option ${c.startsWith("resnet20") ? "selected" : ""}>${esc(c)}</option>`).join("");
  const mine = await json("/api/v1/datasets");
  const keep = $("f-data").value;
  $("f-data").innerHTML = reg.datasets.map((d) => `<option value="${esc(d)}">${esc(d)}</option>`).join("") +
    mine.map((d) => `<option value="${esc(d.id)}">${esc(d.name)} (${esc(d.id)}, ${d.classes.length} classes)</option>`).join("") +
    (reg.tasks || []).map((t) => `<option value="task:${esc(t)}">task: ${esc(t)}</option>`).join("");  // the operator's task plugins
  if (keep && [...$("f-data").options].some((o) => o.value === keep)) $("f-data").value = keep;
  showDatasets(mine);
  if (!schema) { schema = await json("/api/v1/options"); buildForm(reg); }  // once per page load: keeps what was typed
  const me = await json("/api/v1/me");
  $("who").textContent = "user: " + me.user;
}

async function showList() {
  $("list-view").hidden = false; $("job-view").hidden = true;
  const jobs = await json("/api/v1/jobs");
  $("jobs").querySelector("tbody").innerHTML = jobs.map((j) => {
    const p = j.progress;
    return `<tr><td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.spec.model || j.spec.checkpoint || j.spec.upload)}</td>
      <td>${esc(j.spec.budget)}</td><td>${esc(j.spec.method)}</td><td><span class="state ${j.state}">${j.state}</span></td>
      <td>${esc(p.stage)}</td><td>${p.total ? p.done + "/" + p.total : ""}${p.eta_s != null ? ", ETA " + secs(p.eta_s) : ""}</td><td>${fmt(p.best)}</td>
      <td>${new Date(j.created * 1000).toLocaleTimeString()}</td></tr>`;
  }).join("");
}

function showDatasets(mine) {
  $("datasets").querySelector("tbody").innerHTML = mine.map((d) => {
    const n = (s) => d.images[s] || 0;
    return `<tr><td>${esc(d.id)}</td><td>${esc(d.name)}</td><td>${esc(d.classes.join(", "))}</td>
      <td>${n("train")} / ${n("val")} / ${n("test")}</td><td>${d.input_shape.join("x")}</td>
      <td><button class="ds-delete" data-id="${esc(d.id)}">delete</button></td></tr>`;
  }).join("") || '<tr><td colspan="6" class="muted">none yet: upload an archive above</td></tr>';
}

async function uploadDataset(ev) {  // the archive is checked whole by the server before it is kept
  ev.preventDefault();
  showError(null);
  const file = $("d-file").files[0];
  if (!file) return;
  const body = new FormData(); body.append("file", file);
  $("dataset-status").textContent = `uploading ${file.name} (${(file.size / 1048576).toFixed(1)} MiB) and checking it...`;
  try {
    const d = await json("/api/v1/datasets", { method: "POST", body });
    $("dataset-status").textContent = `${d.name}: ${d.classes.length} classes, ${d.images.train} train images`;
    ev.target.reset();
    await loadRegistry();
    $("f-data").value = d.id;  // the new set is the job form's data
  } catch (e) { $("dataset-status").textContent = ""; showError(e); }
}

async function deleteDataset(ev) {
  const id = ev.target.dataset && ev.target.dataset.id;
  if (!ev.target.classList.contains("ds-delete") || !id) return;
  showError(null);
  try { await api(`/api/v1/datasets/${id}`, { method: "DELETE" }); await loadRegistry(); } catch (e) { showError(e); }
}

async function submitForm(ev) {
  ev.preventDefault();
  showError(null);
  const f = new FormData(ev.target), spec = readOptions(ev.target);
  const data = f.get("data") || "";
  if (data.startsWith("task:")) spec.task = data.slice(5);  // a task plugin scores the job instead of a data set
  else if (data) spec.data = data;
  try {
    const file = $("f-weights").files[0];
    if (file) {
      const up = new FormData(); up.append("file", file); if (spec.model) up.append("model", spec.model);
      spec.upload = (await json("/api/v1/uploads", { method: "POST", body: up })).id;
    } else if (f.get("checkpoint")) spec.checkpoint = f.get("checkpoint");
    const job = await json("/api/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(spec) });
    location.hash = "#/jobs/" + job.id;
  } catch (e) { showError(e); }
}

// ---------------------------------------------------------------------------------- one job
function svgEl(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function axes(svg, xs, ys, xlabel, ylabel) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), m = { l: 50, r: 10, t: 10, b: 35 };
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 - x0 < 1e-9) { x0 -= 0.05; x1 += 0.05; } if (y1 - y0 < 1e-9) { y0 -= 0.05; y1 += 0.05; }
  const px = (x) => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r), py = (y) => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
  svg.append(svgEl("line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, stroke: "#888" }));
  svg.append(svgEl("line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, stroke: "#888" }));
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    svg.append(svgEl("text", { x: px(xv), y: H - m.b + 14, "font-size": 10, "text-anchor": "middle" }, xv.toFixed(3)));
    svg.append(svgEl("text", { x: m.l - 4, y: py(yv) + 3, "font-size": 10, "text-anchor": "end" }, yv.toFixed(3)));
  }
  svg.append(svgEl("text", { x: (W + m.l) / 2, y: H - 4, "font-size": 11, "text-anchor": "middle" }, xlabel));
  svg.append(svgEl("text", { x: 12, y: H / 2, "font-size": 11, transform: `rotate(-90 12 ${H / 2})`, "text-anchor": "middle" }, ylabel));
  return [px, py];
}

function plotTrials(data) {
  const svg = $("trials-plot"); svg.innerHTML = "";
  const pts = data.trials.filter((t) => t.state === "COMPLETE" && t.accuracy !== null && t.cost !== null);
  if (!pts.length) { svg.append(svgEl("text", { x: 20, y: 30 }, "no finished trials yet")); return null; }
  const [px, py] = axes(svg, pts.map((t) => t.cost), pts.map((t) => t.accuracy), data.budget_kind + " (fraction of dense)", "held-out accuracy");
  const feas = pts.filter((t) => t.feasible);
  const front = feas.filter((p) => !feas.some((q) => q.accuracy >= p.accuracy && q.cost <= p.cost && (q.accuracy > p.accuracy || q.cost < p.cost)))
    .sort((a, b) => a.cost - b.cost);
  if (front.length > 1) svg.append(svgEl("polyline", { points: front.map((t) => `${px(t.cost)},${py(t.accuracy)}`).join(" "), fill: "none", stroke: "#c60" }));
  let best = null;
  for (const t of feas) if (best === null || t.reward > best.reward) best = t;
  for (const t of pts) {
    const c = svgEl("circle", { cx: px(t.cost), cy: py(t.accuracy), r: 4, fill: t.feasible ? "#46c" : "none", stroke: "#46c", class: "trial" });
    c.append(svgEl("title", {}, `trial ${t.number} (${t.origin}): accuracy ${fmt(t.accuracy)}, cost ${fmt(t.cost)}, reward ${fmt(t.reward)}`));
    svg.append(c);
  }
  if (best) svg.append(svgEl("circle", { cx: px(best.cost), cy: py(best.accuracy), r: 8, fill: "none", stroke: "#c00", "stroke-width": 2 }));
  return best;
}

function plotPolicy(best) {
  const svg = $("policy-plot"); svg.innerHTML = "";
  if (!best || !best.policy) { svg.append(svgEl("text", { x: 20, y: 30 }, "no feasible trial yet")); return; }
  const names = Object.keys(best.policy), W = 520, H = 320, m = { l: 40, b: 90, t: 10 };
  const bw = (W - m.l - 10) / names.length;
  svg.append(svgEl("line", { x1: m.l, y1: H - m.b, x2: W - 10, y2: H - m.b, stroke: "#888" }));
  names.forEach((n, i) => {
    const v = best.policy[n] || 0, h = v * (H - m.t - m.b), x = m.l + i * bw;
    const r = svgEl("rect", { x: x + 1, y: H - m.b - h, width: Math.max(1, bw - 2), height: h, fill: "#46c" });
    r.append(svgEl("title", {}, `${n}: ${fmt(v)}`)); svg.append(r);
    svg.append(svgEl("text", { x: x + bw / 2, y: H - m.b + 6, "font-size": 9, transform: `rotate(60 ${x + bw / 2} ${H - m.b + 6})` }, n));
  });
  for (const v of [0, 0.5, 1]) svg.append(svgEl("text", { x: m.l - 4, y: H - m.b - v * (H - m.t - m.b) + 3, "font-size": 10, "text-anchor": "end" }, v));
}

async function download(ev) {
  ev.preventDefault();
  try {
    const a = ev.currentTarget, blob = await (await api(a.dataset.href)).blob();
    const url = URL.createObjectURL(blob), tmp = document.createElement("a");
    tmp.href = url; tmp.download = a.dataset.name; document.body.append(tmp); tmp.click(); tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { showError(e); }
}

async function showReport(id) {
  const html = await (await api(`/api/v1/jobs/${id}/report`)).text();
  const art = $("report"); art.innerHTML = html;
  for (const img of art.querySelectorAll("img[data-src]")) {
    try { img.src = URL.createObjectURL(await (await api(img.dataset.src)).blob()); } catch (e) { img.alt = "missing: " + img.dataset.src; }
  }
  art.dataset.loaded = "1";
}

async function refreshJob(id) {
  const j = await json(`/api/v1/jobs/${id}`), p = j.progress;
  $("job-title").textContent = `job ${j.id}: ${j.spec.model || j.spec.checkpoint || "upload " + j.spec.upload}, ${j.spec.budget}, ${j.spec.method}`;
  const st = $("job-state"); st.textContent = j.state; st.className = "state " + j.state;
  $("job-stage").textContent = "stage: " + p.stage;
  $("job-bar").style.width = (j.state === "done" ? 100 : p.total ? 100 * p.done / p.total : 0) + "%";
  $("job-progress").textContent = [counted(p), `elapsed ${secs(p.elapsed_s)}`, `attempt ${j.attempts}`].filter(Boolean).join(", ") +
    (p.message ? " — " + p.message : "");
  $("job-error").hidden = !j.error; $("job-error").textContent = j.error || "";
  $("cancel-btn").hidden = !["queued", "running"].includes(j.state);
  $("resume-btn").hidden = !["failed", "cancelled"].includes(j.state);
  plotPolicy(plotTrials(await json(`/api/v1/jobs/${id}/trials`)));
  const files = await json(`/api/v1/jobs/${id}/files`);
  $("files").innerHTML = files.filter((f) => f.main || f.path.endsWith(".png")).map((f) =>
    `<li><a href="#" data-href="/api/v1/jobs/${id}/files/${encodeURI(f.path)}" data-name="${esc(f.path.replace(/\//g, "_"))}">${esc(f.path)}</a> (${size(f.bytes)})</li>`).join("");
  for (const a of $("files").querySelectorAll("a")) a.addEventListener("click", download);
  if (j.state === "done" && !$("report").dataset.loaded) await showReport(id);
  return j.state;
}

async function showJob(id) {
  $("list-view").hidden = true; $("job-view").hidden = false;
  $("report").innerHTML = '<p class="muted">the report appears when the job is done</p>'; delete $("report").dataset.loaded;
  $("cancel-btn").onclick = async () => { try { await api(`/api/v1/jobs/${id}/cancel`, { method: "POST" }); } catch (e) { showError(e); } };
  $("resume-btn").onclick = async () => { try { await api(`/api/v1/jobs/${id}/resume`, { method: "POST" }); poll(id); } catch (e) { showError(e); } };
  poll(id);
}

function poll(id) {
  clearTimeout(timer);
  const tick = async () => {
    try {
      const state = await refreshJob(id);
      if (!["done", "failed", "cancelled"].includes(state)) timer = setTimeout(tick, 1000);
    } catch (e) { showError(e); timer = setTimeout(tick, 3000); }
  };
  tick();
}

// ---------------------------------------------------------------------------------- routing
async function route() {
  clearTimeout(timer);
  takeTokenFromHash();
  showError(null);
  if (!token) { showError("paste an API token above (amc token create USER)"); return; }
  try {
    await loadRegistry();
    const m = location.hash.match(/^#\/jobs\/([0-9a-f]+)/);
    if (m) await showJob(m[1]); else await showList();
  } catch (e) { showError(e); }
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault(); token = $("token").value.trim(); localStorage.setItem("amc-token", token); route();
});
$("submit-form").addEventListener("submit", submitForm);
$("dataset-form").addEventListener("submit", uploadDataset);
$("datasets").addEventListener("click", deleteDataset);
window.addEventListener("hashchange", route);
route();
