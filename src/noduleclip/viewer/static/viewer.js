// noduleclip viewer: lists the scans under the server's root, shows axial slices (rendered and windowed by the
// server), and asks the server to predict the nodule under a click. No framework, nothing from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  scans: [], scan: null, slice: 0, width: 1500, level: -600, nodules: [], selected: null, busy: false,
};
const VIEW_BOX = 640; // the largest side of the displayed slice, in CSS pixels

function percent(p) { // as noduleclip.predict.panel.percent
  return (p >= 0.1 && p <= 0.995) ? `${(100 * p).toFixed(0)}%` : `${(100 * p).toFixed(1)}%`;
}

function scanQuery(scan) {
  const q = new URLSearchParams({ path: scan.path });
  if (scan.series_uid) q.set("series", scan.series_uid);
  return q;
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error(`the viewer's server does not answer (${err.message}); is noduleclip serve still running?`);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

let errorTimer = null;
function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { $("error").hidden = true; }, 12000);
}
$("error-close").onclick = () => { $("error").hidden = true; };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// -- the run and the scans ------------------------------------------------------------------------------------------

async function loadInfo() {
  try {
    const info = await api("/api/info");
    $("run-info").textContent = `run “${info.run}”: ` + (info.card || `${info.backbone}, ${info.calibration ? "calibrated (" + info.calibration + ")" : "uncalibrated"}`);
    $("run-notes").textContent = info.notes.filter((n) => n.startsWith("RANDOM") || n.startsWith("uncalibrated")).join("; ");
  } catch (err) { showError(err.message); }
}

async function loadScans(refresh = false) {
  try {
    const listing = await api("/api/scans" + (refresh ? "?refresh=1" : ""));
    state.scans = listing.scans;
    renderScans();
    $("problems").replaceChildren(...listing.problems.map((p) => el("li", { title: p.error }, `${p.path}: ${p.error}`)));
  } catch (err) { showError(err.message); }
}

function renderScans() {
  const filter = $("scan-filter").value.trim().toLowerCase();
  const shown = state.scans.filter((s) => !filter || s.label.toLowerCase().includes(filter));
  const items = shown.map((scan) => {
    const active = state.scan && state.scan.path === scan.path && (state.scan.series_uid || "") === (scan.series_uid || "");
    return el("li", { class: active ? "active" : "", "data-path": scan.path, title: scan.series_uid || scan.path,
                      onclick: () => openScan(scan) },
      el("span", { class: "grow" }, scan.label),
      ...(scan.nodules ? [el("span", { class: "marks", title: "nodules marked by a manifest" }, `${scan.nodules} marked`)] : []),
      el("span", { class: "tag" }, scan.kind));
  });
  $("scan-list").replaceChildren(...(items.length ? items : [el("li", { class: "muted" },
    state.scans.length ? "no scan matches" : "no CT scans under the root")]));
}

async function openScan(entry) {
  setStatus(`opening ${entry.label}…`);
  try {
    const scan = await api("/api/scan?" + scanQuery(entry));
    state.scan = scan;
    state.nodules = scan.nodules;
    state.selected = null;
    $("empty").hidden = true;
    $("workspace").hidden = false;
    $("scan-name").textContent = entry.label;
    layoutViewport();
    $("scrollbar").max = scan.slices - 1;
    const first = scan.marked.length ? Math.round(scan.marked[0].screen[2]) : Math.floor(scan.slices / 2);
    renderScans();
    renderMarked();
    renderNodules();
    showResult(null);
    setSlice(first);
    setStatus("");
  } catch (err) { setStatus(""); showError(err.message); }
}

// -- the slice ------------------------------------------------------------------------------------------------------

function layoutViewport() {
  const scan = state.scan;
  const widthMm = scan.columns * scan.pixel_mm[0], heightMm = scan.rows * scan.pixel_mm[1];
  const scale = VIEW_BOX / Math.max(widthMm, heightMm);
  const w = Math.round(widthMm * scale), h = Math.round(heightMm * scale);
  const img = $("slice");
  img.style.width = `${w}px`;
  img.style.height = `${h}px`;
  img.classList.toggle("pixelated", w / scan.columns > 2);
  $("scrollbar").style.height = `${h}px`;
  $("overlay").setAttribute("viewBox", `0 0 ${scan.columns} ${scan.rows}`);
  $("overlay").setAttribute("preserveAspectRatio", "none");
}

function sliceUrl(index) {
  const q = scanQuery(state.scan);
  q.set("index", index);
  q.set("width", state.width);
  q.set("level", state.level);
  return "/api/slice?" + q;
}

const prefetched = new Map();
function prefetch(index) {
  const url = sliceUrl(index);
  if (index < 0 || index >= state.scan.slices || prefetched.has(url)) return;
  const image = new Image();
  image.src = url;
  prefetched.set(url, image);
  if (prefetched.size > 400) prefetched.delete(prefetched.keys().next().value);
}

function setSlice(index) {
  const scan = state.scan;
  if (!scan) return;
  state.slice = Math.max(0, Math.min(scan.slices - 1, Math.round(index)));
  $("slice").src = sliceUrl(state.slice);
  $("scrollbar").value = state.slice;
  const z = scan.slice_z[state.slice];
  $("slice-info").textContent = `Slice ${state.slice + 1} / ${scan.slices}\nz = ${z.toFixed(1)} mm`;
  $("slice-info").dataset.index = state.slice;
  $("window-info").textContent = `W ${state.width}  L ${state.level}`;
  for (let d = 1; d <= 3; d++) { prefetch(state.slice + d); prefetch(state.slice - d); }
  drawOverlay();
}

function setWindow(width, level) {
  state.width = width;
  state.level = level;
  $("win-width").value = width;
  $("win-level").value = level;
  for (const button of document.querySelectorAll("button.preset")) {
    button.classList.toggle("active", Number(button.dataset.width) === width && Number(button.dataset.level) === level);
  }
  if (state.scan) setSlice(state.slice);
}

for (const button of document.querySelectorAll("button.preset")) {
  button.onclick = () => setWindow(Number(button.dataset.width), Number(button.dataset.level));
}
for (const id of ["win-width", "win-level"]) {
  $(id).addEventListener("change", () => {
    const width = Number($("win-width").value), level = Number($("win-level").value);
    if (Number.isFinite(width) && width >= 1 && Number.isFinite(level)) setWindow(width, level);
    else showError("the window width must be at least 1 HU and the level a number");
  });
}

$("viewport").addEventListener("wheel", (event) => {
  if (!state.scan) return;
  event.preventDefault();
  const step = Math.sign(event.deltaY) * (event.shiftKey ? 5 : 1);
  if (step) setSlice(state.slice + step);
}, { passive: false });
$("scrollbar").addEventListener("input", () => setSlice(Number($("scrollbar").value)));
document.addEventListener("keydown", (event) => {
  if (!state.scan || event.target.tagName === "INPUT") return;
  const steps = { ArrowUp: -1, ArrowDown: 1, PageUp: -10, PageDown: 10 };
  if (event.key in steps) { setSlice(state.slice + steps[event.key]); event.preventDefault(); }
  else if (event.key === "Home") setSlice(0);
  else if (event.key === "End") setSlice(state.scan.slices - 1);
});

// -- the overlay: marked and predicted nodules ----------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function drawOverlay() {
  const scan = state.scan, overlay = $("overlay");
  overlay.replaceChildren();
  for (const old of document.querySelectorAll(".overlay-label")) old.remove(); // labels: CSS pixels, unstretched
  const img = $("slice");
  const sx = parseFloat(img.style.width) / scan.columns, sy = parseFloat(img.style.height) / scan.rows;
  const radius = 13; // CSS pixels
  const mark = (screen, colour, text, dashed, onclick, title) => {
    const near = Math.abs(screen[2] - state.slice);
    if (near > 2.5) return;
    const cx = screen[0] + 0.5, cy = screen[1] + 0.5;
    const group = svg("g", { opacity: near < 0.5 ? 1 : 0.45 });
    group.append(svg("ellipse", { cx, cy, rx: radius / sx, ry: radius / sy, fill: "none", stroke: colour,
      "stroke-width": 2, "vector-effect": "non-scaling-stroke", ...(dashed ? { "stroke-dasharray": "5 4" } : {}) }));
    if (onclick) {
      const hit = svg("ellipse", { class: "hit", cx, cy, rx: radius / sx, ry: radius / sy, fill: "transparent" });
      hit.addEventListener("click", (event) => { event.stopPropagation(); onclick(); });
      const tip = svg("title", {});
      tip.textContent = title;
      hit.append(tip);
      group.append(hit);
    }
    overlay.append(group);
    const below = !dashed; // predicted nodules labelled below their circle, marked ones above: no overlap
    overlayLabel(cx * sx + radius + 3, cy * sy + (below ? radius + 12 : 4 - radius), text, colour, near < 0.5 ? 1 : 0.45);
  };
  const predicted = new Set(state.nodules.map((n) => n.nodule_id));
  for (const nodule of scan.marked.filter((n) => !predicted.has(n.nodule_id))) {
    mark(nodule.screen, "#ffd23f", nodule.nodule_id, true, () => predict({ nodule_id: nodule.nodule_id }),
      `${nodule.nodule_id} (${nodule.manifest}): click to predict`);
  }
  for (const nodule of state.nodules) {
    const colour = nodule.nodule_id === state.selected ? "#4c8dff" : "#ff7a59";
    mark(nodule.screen, colour, `${nodule.nodule_id} ${percent(nodule.risk)}`, false, () => selectNodule(nodule.nodule_id),
      `${nodule.nodule_id}: risk ${percent(nodule.risk)}`);
  }
}

function overlayLabel(x, y, text, colour, opacity) {
  // labels live in CSS pixels, above the viewBox-scaled shapes
  const label = el("div", { class: "corner overlay-label" });
  label.style.left = `${x}px`;
  label.style.top = `${y - 14}px`;
  label.style.color = colour;
  label.style.opacity = opacity;
  label.textContent = text;
  $("viewport").append(label);
}


// -- clicks and predictions -----------------------------------------------------------------------------------------

function screenOf(event) {
  const rect = $("slice").getBoundingClientRect(), scan = state.scan;
  const column = Math.floor((event.clientX - rect.left) / rect.width * scan.columns);
  const row = Math.floor((event.clientY - rect.top) / rect.height * scan.rows);
  if (column < 0 || row < 0 || column >= scan.columns || row >= scan.rows) return null;
  return [column, row];
}

$("viewport").addEventListener("click", (event) => {
  if (!state.scan || state.busy) return;
  const at = screenOf(event);
  if (at) predict({ column: at[0], row: at[1], slice: state.slice });
});

$("viewport").addEventListener("mousemove", (event) => {
  if (!state.scan) return;
  const at = screenOf(event);
  if (!at) { $("cursor").innerHTML = "&nbsp;"; return; }
  const a = state.scan.screen_to_world, p = [at[0], at[1], state.slice, 1];
  const world = a.map((row) => row.reduce((sum, v, i) => sum + v * p[i], 0));
  $("cursor").textContent = `pixel (${at[0]}, ${at[1]}), slice ${state.slice + 1}:  x ${world[0].toFixed(1)}, ` +
    `y ${world[1].toFixed(1)}, z ${world[2].toFixed(1)} mm (LPS)`;
});

async function predict(what) {
  const scan = state.scan;
  state.busy = true;
  $("viewport").classList.add("busy");
  setStatus("predicting…");
  try {
    const result = await api("/api/predict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ path: scan.path, series: scan.series_uid, ...what }),
    });
    if (state.scan !== scan) return;
    state.nodules = state.nodules.filter((n) => n.nodule_id !== result.nodule_id).concat([result]);
    renderNodules();
    selectNodule(result.nodule_id);
    setStatus(`predicted ${result.nodule_id} in ${result.seconds.toFixed(2)} s`);
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    state.busy = false;
    $("viewport").classList.remove("busy");
  }
}

function selectNodule(id) {
  const nodule = state.nodules.find((n) => n.nodule_id === id);
  state.selected = nodule ? id : null;
  if (nodule && Math.round(nodule.screen[2]) !== state.slice) setSlice(nodule.screen[2]);
  renderNodules();
  showResult(nodule || null);
  drawOverlay();
}

async function removeNodule(id) {
  const scan = state.scan;
  const q = scanQuery(scan);
  q.set("id", id);
  try {
    const answer = await api("/api/nodule?" + q, { method: "DELETE" });
    state.nodules = answer.nodules;
    if (state.selected === id) { state.selected = null; showResult(null); }
    renderNodules();
    drawOverlay();
  } catch (err) { showError(err.message); }
}

// -- the lists and the result ---------------------------------------------------------------------------------------

function renderMarked() {
  const marked = state.scan.marked;
  $("marked-section").hidden = !marked.length;
  $("marked-list").replaceChildren(...marked.map((n) => el("li", {
    title: `${n.manifest}: (${n.center_lps.map((v) => v.toFixed(1)).join(", ")}) mm LPS`,
    "data-nodule": n.nodule_id, onclick: () => setSlice(n.screen[2]) },
  el("span", { class: "grow" }, n.nodule_id),
  el("span", { class: "muted" }, `slice ${Math.round(n.screen[2]) + 1}`),
  el("button", { class: "small", title: "predict this nodule", "aria-label": `predict ${n.nodule_id}`,
                 onclick: (e) => { e.stopPropagation(); setSlice(n.screen[2]); predict({ nodule_id: n.nodule_id }); } },
  "predict"))));
}

function renderNodules() {
  $("nodule-section").hidden = false;
  const items = state.nodules.map((n) => el("li", {
    class: n.nodule_id === state.selected ? "active" : "", "data-nodule": n.nodule_id,
    onclick: () => selectNodule(n.nodule_id) },
  el("span", { class: "grow" }, `${n.nodule_id} `, el("span", { class: "muted" },
    `slice ${Math.round(n.screen[2]) + 1} · (${n.center_lps.map((v) => v.toFixed(0)).join(", ")})`)),
  el("span", { class: "risk-chip" }, percent(n.risk)),
  el("button", { class: "remove", title: "remove from the list", "aria-label": `remove ${n.nodule_id}`,
                 onclick: (e) => { e.stopPropagation(); removeNodule(n.nodule_id); } }, "×")));
  $("nodule-list").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "click a nodule on the image")]));
  $("nodule-count").textContent = state.nodules.length ? `(${state.nodules.length})` : "";
  const q = scanQuery(state.scan);
  for (const [id, name] of [["dl-json", "predictions.json"], ["dl-csv", "predictions.csv"], ["dl-sr", "structured_report.dcm"]]) {
    $(id).href = `/api/download/${name}?${q}`;
    $(id).classList.toggle("disabled", !state.nodules.length);
  }
  $("dl-sr").hidden = !state.scan.is_dicom;
}

function showResult(nodule) {
  $("result").hidden = !nodule;
  $("panel-box").hidden = !nodule;
  if (!nodule) return;
  $("result-id").textContent = `· ${nodule.nodule_id}`;
  $("risk").textContent = percent(nodule.risk);
  const calibrated = Boolean(nodule.calibration);
  $("calibration").textContent = calibrated
    ? `calibrated (${nodule.calibration}); uncalibrated ${percent(nodule.risk_uncalibrated)}`
    : "UNCALIBRATED: the fold ensemble's raw probability";
  $("calibration").classList.toggle("uncalibrated", !calibrated);
  $("folds").textContent = "fold models: " + nodule.fold_risks.map(percent).join("  ");
  const rows = Object.entries(nodule.semantics).map(([feature, { value, probability }]) => el("tr", {},
    el("td", { class: "feature" }, feature.replaceAll("_", " ")),
    el("td", { class: "value" }, value),
    el("td", { class: "bar" }, (() => { const t = el("div", { class: "track" }); const f = el("div", { class: "fill" });
      f.style.width = `${Math.round(100 * probability)}%`; t.append(f); return t; })()),
    el("td", { class: "p" }, percent(probability))));
  $("semantics").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "muted" }, "no semantic profile"))]));
  $("result-notes").textContent = nodule.notes.filter((n) => !n.startsWith("uncalibrated")).join(" ");
  const q = scanQuery(state.scan);
  q.set("id", nodule.nodule_id);
  q.set("t", nodule.seconds);
  $("panel").src = "/api/panel?" + q;
}

function setStatus(text) { $("status").textContent = text; }

$("scan-filter").addEventListener("input", renderScans);
$("refresh").onclick = () => loadScans(true);
loadInfo();
loadScans();
