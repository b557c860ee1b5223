// seqmnist draw-a-digit page: draw on #pad, the server prepares the image the MNIST way and every
// loaded model answers; for row-reading recurrent models we also show the belief after each row.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const seenCtx = seen.getContext("2d");
const statusLine = document.getElementById("status");
const modelsPanel = document.getElementById("models");
let lastImage = null;     // the 28 x 28 image the models saw
let highlight = null;  // {readAt, step}: the pixels a step reads, marked on the preview
let drawing = false;
let timer = null;
let hasInk = false;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
}

function point(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width, (event.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (e) => {
  drawing = true;
  pad.setPointerCapture(e.pointerId);
  const [x, y] = point(e);
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x + 0.1, y + 0.1);
  stroke();
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const [x, y] = point(e);
  ctx.lineTo(x, y);
  stroke();
});
for (const ev of ["pointerup", "pointercancel", "pointerleave"]) {
  pad.addEventListener(ev, () => { if (drawing) { drawing = false; schedule(0); } });
}

function stroke() {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 18;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.stroke();
  hasInk = true;
  schedule(150);
}

function schedule(delay) {  // debounce: predict once the pen rests
  clearTimeout(timer);
  timer = setTimeout(() => { if (hasInk) pad.toBlob((blob) => send(blob, "image/png")); }, delay);
}

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  lastImage = null;
  seenCtx.clearRect(0, 0, seen.width, seen.height);
  statusLine.textContent = "Draw a digit with your mouse or finger.";
  for (const card of modelsPanel.querySelectorAll(".card")) card.classList.add("stale");
});

document.getElementById("upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  send(form, null);
  e.target.value = "";
  try {  // show the upload where the drawing was, scaled to fit
    const img = await createImageBitmap(file);
    clearPad();
    const scale = Math.min(pad.width / img.width, pad.height / img.height);
    const w = img.width * scale, h = img.height * scale;
    ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    hasInk = true;
  } catch (err) {
    // the browser cannot decode it; the server's answer says why
  }
});

async function send(body, type) {
  statusLine.textContent = "Reading…";
  statusLine.classList.remove("error");
  const opts = { method: "POST", body };
  if (type) opts.headers = { "Content-Type": type };
  try {
    const resp = await fetch("/api/predict", opts);
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    show(data);
    lookInside(body, type);
    statusLine.textContent = "Keep drawing, or Clear to start again.";
  } catch (err) {
    statusLine.textContent = err.message.startsWith("too little ink")
      ? "Draw a digit: that is only a dot." : "Could not read that: " + err.message;
    statusLine.classList.add("error");
    for (const card of modelsPanel.querySelectorAll(".card")) card.classList.add("stale");
  }
}

function drawSeen() {
  if (!lastImage) return;
  const n = lastImage.length, cell = seen.width / n;
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      const v = lastImage[r][c];
      seenCtx.fillStyle = `rgb(${v},${v},${v})`;
      seenCtx.fillRect(c * cell, r * cell, cell + 0.5, cell + 0.5);
    }
  }
  if (highlight !== null && highlight.readAt && highlight.readAt.length === n) {
    // the view says which pixels each step reads (read_at); the page knows no view by name
    seenCtx.fillStyle = "rgba(255,77,79,0.45)";
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
      if (highlight.readAt[r][c] === highlight.step) seenCtx.fillRect(c * cell, r * cell, cell + 0.5, cell + 0.5);
    }
  }
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function bars(classes, probs) {
  const box = el("div", { class: "bars" });
  const top = probs.indexOf(Math.max(...probs));
  probs.forEach((p, i) => {
    box.append(el("span", {}, classes[i]));
    const bar = el("div", { class: "bar" + (i === top ? " top" : "") });
    const fill = el("span");
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.append(fill);
    box.append(bar, el("span", {}, (100 * p).toFixed(1) + "%"));
  });
  return box;
}

// The row from which the final answer stays on top with more than half the belief.
function sureFrom(steps, answer) {
  let row = null;
  for (let r = steps.length - 1; r >= 0; r--) {
    const p = steps[r];
    if (p.indexOf(Math.max(...p)) === answer && p[answer] > 0.5) row = r; else break;
  }
  return row;
}

function beliefStrip(m) {
  const wrap = el("div", { class: "rows" });
  const unit = m.unit || "step";  // what one step reads, as the view names it: row, column, pixel
  wrap.append(el("h4", {}, `Belief after each ${unit} it reads`));
  const sure = sureFrom(m.steps, m.index);
  const note = el("p", { class: "sure" }, sure === null
    ? `It only settles on the last ${unit}s.`
    : `Sure it is ${m.prediction} from ${unit} ${sure + 1} of ${m.steps.length} on.`);
  // one orientation everywhere (as in the inside view below): a row per class, a column per step
  const n = m.steps.length, k = m.classes.length;
  const strip = el("canvas", { class: "belief", width: n, height: k,
                               "aria-label": `belief per ${unit}: a row per class, a column per ${unit}` });
  const g = strip.getContext("2d");
  m.steps.forEach((p, t) => p.forEach((v, c) => {
    const shade = Math.round(255 * (1 - v));
    g.fillStyle = `rgb(${shade},${Math.round(shade * 0.9 + 25)},255)`;
    g.fillRect(t, c, 1, 1);
  }));
  const classAxis = el("div", { class: "class-axis", "aria-hidden": "true" });
  classAxis.style.gridTemplateRows = `repeat(${k}, 1fr)`;  // one label per row of the strip
  if (k > 10) classAxis.style.fontSize = ".5rem";
  m.classes.forEach((c) => classAxis.append(el("span", {}, c)));
  const axis = el("div", { class: "step-axis", "aria-hidden": "true" });
  for (const t of [...new Set([1, Math.round(n / 4), Math.round(n / 2), Math.round(3 * n / 4), n])]) {
    const label = el("span", {}, `${unit} ${t}`);
    label.style.left = `${(100 * (t - 0.5)) / n}%`;
    axis.append(label);
  }
  const plot = el("div", { class: "belief-plot" });
  const column = el("div", { class: "belief-column" });
  column.append(strip, axis);
  plot.append(classAxis, column);
  const legend = el("p", { class: "axis-names" }, `class (rows) · ${unit} read (left to right)`);
  const scale = el("div", { class: "scale" });
  scale.append(el("span", {}, "0%"), el("span", { class: "gradient" }), el("span", {}, "100% belief"));
  const detail = el("p", { class: "row-detail" }, `Point at a ${unit} to see what it believed there.`);
  strip.addEventListener("pointermove", (e) => {
    const t = Math.min(n - 1, Math.floor(e.offsetX / strip.clientWidth * n));
    const p = m.steps[t], best = p.indexOf(Math.max(...p));
    detail.textContent = `After ${unit} ${t + 1} of ${n}: ${m.classes[best]} (${(100 * p[best]).toFixed(0)}%)`;
    highlight = { readAt: m.read_at, step: t };
    drawSeen();
  });
  strip.addEventListener("pointerleave", () => { highlight = null; drawSeen(); });
  wrap.append(note, legend, plot, scale, detail);
  return wrap;
}

function show(data) {
  lastImage = data.image;
  drawSeen();
  modelsPanel.replaceChildren();
  for (const m of data.models) {
    const card = el("article", { class: "card", "data-model": m.model });
    const acc = m.test_accuracy == null ? "" : ` · ${(100 * m.test_accuracy).toFixed(2)}% on the test set`;
    card.append(el("h3", {}, `${m.model} (${m.view})`), el("div", { class: "meta" }, `${m.dataset}${acc}`));
    if (m.error) {  // this model could not answer (the others still do)
      card.append(el("p", { class: "error" }, m.error));
      modelsPanel.append(card);
      continue;
    }
    const verdict = el("div", { class: "verdict" });
    verdict.append(el("span", { class: "prediction", "data-digit": m.prediction }, m.prediction),
                   el("span", { class: "confidence" }, `${(100 * m.probabilities[m.index]).toFixed(1)}% sure`));
    card.append(verdict, bars(m.classes, m.probabilities));
    if (m.steps) card.append(beliefStrip(m));
    modelsPanel.append(card);
  }
}

// The inside view of the same image (the panels of explain.html, filled by explain.js).
let insideRequest = 0;
async function lookInside(body, type) {
  const mine = ++insideRequest;
  const opts = { method: "POST", body };
  if (type) opts.headers = { "Content-Type": type };
  try {
    let resp = await fetch("/api/explain", opts);
    while (resp.status === 503 && mine === insideRequest) {  // busy: ask again when it says
      await new Promise((r) => setTimeout(r, 1000 * (Number(resp.headers.get("Retry-After")) || 1)));
      if (mine !== insideRequest) return;
      resp = await fetch("/api/explain", opts);
    }
    const data = await resp.json();
    if (!resp.ok || mine !== insideRequest) return;  // a newer drawing is on its way
    const box = document.getElementById("inside-body");
    if (!box.childElementCount) box.innerHTML = await (await fetch("/explain-body.html")).text();
    document.getElementById("inside").hidden = false;
    seqmnistExplain(data);
  } catch (err) {
    // the answers above stand; the inside view is an extra
  }
}

async function loadModels() {
  const resp = await fetch("/api/models");
  const data = await resp.json();
  for (const m of data.models) {
    const card = el("article", { class: "card stale", "data-model": m.model });
    card.append(el("h3", {}, `${m.model} (${m.view})`), el("div", { class: "meta" }, `${m.dataset} · ${m.pretrained ? "pretrained" : m.name}`));
    modelsPanel.append(card);
  }
  // runs shipped with seqmnist stand in until the user has trained their own: say so
  document.getElementById("pretrained-note").hidden = !data.models.some((m) => m.pretrained);
}

clearPad();
loadModels();
