// seqmnist explain: draws explain.json's numbers (embedded in the page as #explain-data).
// Everything is inside one function scope: the serve page loads this beside app.js.
(() => {
"use strict";
const $ = (id) => document.getElementById('x-' + id);
let items = [], current = 0, step = 1, timer = null, wired = false;
// A key from the data (a run folder, a state's name) is looked up as the object's own member
// only: a run named "constructor" or "__proto__" must not find Object.prototype's.
const own = (obj, key) => (obj != null && Object.prototype.hasOwnProperty.call(obj, key)) ? obj[key] : undefined;

function heat(v, lo, hi) {           // white -> dark blue
  const t = hi > lo ? Math.min(1, Math.max(0, (v - lo) / (hi - lo))) : 0;
  return `rgb(${Math.round(255 - 225 * t)},${Math.round(255 - 185 * t)},${Math.round(255 - 60 * t)})`;
}
function diverge(v, m) {             // blue (negative) - white - red (positive)
  const t = m > 0 ? Math.max(-1, Math.min(1, v / m)) : 0;
  return t >= 0 ? `rgb(255,${Math.round(255 - 200 * t)},${Math.round(255 - 200 * t)})`
                : `rgb(${Math.round(255 + 200 * t)},${Math.round(255 + 200 * t)},255)`;
}
function canvas(el, w, h, scaleX, scaleY) {
  el.width = w * scaleX; el.height = h * scaleY;
  const ctx = el.getContext('2d');
  ctx.setTransform(scaleX, 0, 0, scaleY, 0, 0);
  return ctx;
}
function absmax(a) { let m = 0; for (const v of a.flat()) m = Math.max(m, Math.abs(v)); return m; }

// The view says how it reads the image (it.reading.read_at: the step at which each pixel is
// read); the page knows no view by name.
function readMask(it) {               // which pixels have been read after `step` steps
  const H = it.image.length, W = it.image[0].length, read = [];
  const at = it.reading && it.reading.read_at;
  for (let y = 0; y < H; y++) read.push(at ? at[y].map((s) => s < step) : new Array(W).fill(true));
  return read;
}

function drawInput(it) {
  const H = it.image.length, W = it.image[0].length, read = readMask(it);
  const ctx = canvas($('input'), W, H, 8, 8);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    const v = it.image[y][x];
    ctx.fillStyle = read[y][x] ? `rgb(${v},${v},${v})` : `rgb(${40 + v * 0.25},${30 + v * 0.2},${30 + v * 0.2})`;
    ctx.fillRect(x, y, 1, 1);
  }
  // the pixels this step reads, marked (lightly where a step reads many: a row, a column)
  ctx.fillStyle = it.order ? 'rgba(255,200,0,0.9)' : 'rgba(255,200,0,0.4)';
  if (it.reading) {
    const at = it.reading.read_at;
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) if (at[y][x] === step - 1) ctx.fillRect(x, y, 1, 1);
  }
  const ro = $('reading');
  const scrambled = !!(it.reading && it.reading.scrambled && it.order);
  ro.parentElement.style.display = scrambled ? '' : 'none';
  if (scrambled) {                       // the same pixels laid out in the order they are read
    const c2 = canvas(ro, W, H, 8, 8);
    for (let k = 0; k < H * W; k++) {
      const p = it.order[k], v = it.image[Math.floor(p / W)][p % W];
      c2.fillStyle = k < step ? `rgb(${v},${v},${v})` : `rgb(${40 + v * 0.25},30,30)`;
      c2.fillRect(k % W, Math.floor(k / W), 1, 1);
    }
  }
}

function drawSaliency(it) {
  const H = it.saliency.length, W = it.saliency[0].length, m = absmax(it.saliency);
  const ctx = canvas($('saliency'), W, H, 8, 8);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    ctx.fillStyle = diverge(it.saliency[y][x], m); ctx.fillRect(x, y, 1, 1);
    if (it.image[y][x] > 128) { ctx.fillStyle = 'rgba(0,0,0,0.25)'; ctx.fillRect(x, y, 1, 1); }
  }
}

function drawBelief(it) {
  const T = it.steps, C = it.classes.length;
  const sx = Math.max(1, Math.floor(560 / T)), ctx = canvas($('belief'), T, C, sx, 14);
  for (let t = 0; t < T; t++) for (let c = 0; c < C; c++) {
    ctx.fillStyle = heat(it.belief[t][c], 0, 1); ctx.fillRect(t, c, 1, 1);
  }
  ctx.fillStyle = 'rgba(255,140,0,0.55)'; ctx.fillRect(step - 1, 0, 1, C);
  ctx.fillStyle = 'rgba(0,160,0,0.8)'; ctx.fillRect(it.decided_at, 0, Math.min(1, 3 / sx), C);
  const now = it.belief[step - 1], top = now.indexOf(Math.max(...now));
  $('belief-now').textContent = `After step ${step} of ${T}, the most probable class is ` +
    `${it.classes[top]} (${(100 * now[top]).toFixed(1)}%).`;
  const ticks = $('belief-labels');          // one label beside each row of the canvas
  ticks.replaceChildren(...it.classes.map((c) => {
    const d = document.createElement('div'); d.textContent = c; d.title = c; return d;
  }));
}

function drawBars(id, values, label) {
  const T = values.length, m = absmax(values) || 1;
  const sx = Math.max(1, Math.floor(560 / T)), ctx = canvas($(id), T, 60, sx, 1);
  for (let t = 0; t < T; t++) {
    const v = values[t], h = Math.abs(v) / m * 29;
    ctx.fillStyle = v >= 0 ? '#c0392b' : '#2c6fbb';
    ctx.fillRect(t, v >= 0 ? 30 - h : 30, 1, Math.max(h, 0.5));
  }
  ctx.fillStyle = 'rgba(255,140,0,0.45)'; ctx.fillRect(step - 1, 0, 1, 60);
  $(id + '-now').textContent = `${label} at step ${step}: ${values[step - 1].toFixed(4)}`;
}

function drawStates(it) {
  const box = $('states'); box.innerHTML = '';
  for (const [name, values] of Object.entries(it.state)) {
    const div = document.createElement('div'); div.className = 'x-state';
    const title = document.createElement('div'); title.className = 'x-muted';
    const cv = document.createElement('canvas'); div.append(title, cv); box.append(div);
    const T = values.length, U = values[0].length;
    if (name.endsWith('.attention')) {      // row t: attention over the steps read so far
      const s = Math.max(1, Math.floor(280 / T)), ctx = canvas(cv, T, T, s, s), m = absmax(values);
      for (let t = 0; t < T; t++) for (let u = 0; u <= t; u++) { ctx.fillStyle = heat(values[t][u], 0, m); ctx.fillRect(u, t, 1, 1); }
      ctx.fillStyle = 'rgba(255,140,0,0.6)'; ctx.fillRect(0, step - 1, T, 1);
      title.textContent = `${name}: where step ${step} looks (steps read so far)`;
      continue;
    }
    const order = own(it.unit_order, name) || [...Array(U).keys()];
    const sx = Math.max(1, Math.floor(420 / T)), sy = Math.max(2, Math.floor(160 / U));
    const ctx = canvas(cv, T, U, sx, sy), m = absmax(values);
    const gate = name.endsWith('_gate') || name.endsWith('.state');
    for (let t = 0; t < T; t++) for (let k = 0; k < U; k++) {
      const v = values[t][order[k]];
      ctx.fillStyle = gate ? heat(v, 0, gate && name.endsWith('_gate') ? 1 : m) : diverge(v, m);
      ctx.fillRect(t, k, 1, 1);
    }
    ctx.fillStyle = 'rgba(255,140,0,0.45)'; ctx.fillRect(step - 1, 0, 1, U);
    title.textContent = `${name} (${U} units x ${T} steps)`;
  }
  $('states-panel').style.display = Object.keys(it.state).length ? '' : 'none';
}

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
                 '#7f7f7f', '#bcbd22', '#17becf'];
let datasets = {};

function drawDataset(it) {
  const d = own(datasets, it.run);
  $('dataset-panel').style.display = d ? '' : 'none';
  if (!d) return;
  const pts = d.pca.points, size = 300;
  let lo = [Infinity, Infinity], hi = [-Infinity, -Infinity];
  const all = it.path ? pts.concat(it.path) : pts;
  for (const [x, y] of all) { lo = [Math.min(lo[0], x), Math.min(lo[1], y)]; hi = [Math.max(hi[0], x), Math.max(hi[1], y)]; }
  const px = (v, k) => 8 + (size - 16) * (v - lo[k]) / ((hi[k] - lo[k]) || 1);
  const ctx = canvas($('pca'), size, size, 1, 1);
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, size, size);
  pts.forEach(([x, y], i) => {
    ctx.fillStyle = PALETTE[d.pca.labels[i] % PALETTE.length];
    ctx.globalAlpha = 0.5; ctx.fillRect(px(x, 0) - 1.5, px(y, 1) - 1.5, 3, 3);
  });
  ctx.globalAlpha = 1;
  if (it.path) {
    ctx.strokeStyle = '#111'; ctx.lineWidth = 1.5; ctx.beginPath();
    for (let t = 0; t < step; t++) {
      const [x, y] = it.path[t];
      if (t === 0) ctx.moveTo(px(x, 0), px(y, 1)); else ctx.lineTo(px(x, 0), px(y, 1));
    }
    ctx.stroke();
    const [x, y] = it.path[step - 1];
    ctx.fillStyle = '#ff8c00'; ctx.beginPath(); ctx.arc(px(x, 0), px(y, 1), 5, 0, 7); ctx.fill();
  }
  $('pca-n').textContent = d.images; $('pca-var').textContent = (100 * d.pca.explained).toFixed(0) + '%';
  $('pca-legend').replaceChildren(...d.classes.map((c, k) => {
    const s = document.createElement('span'), dot = document.createElement('i');
    dot.style.background = PALETTE[k % PALETTE.length]; s.append(dot, c); return s;
  }));
  $('median-n').textContent = d.images;
  const B = d.importance.length, C = d.classes.length, m = absmax(d.importance);
  // a row per class (14 px, as the belief's rows and their labels), a column per stretch
  const ic = canvas($('importance'), B, C, Math.max(4, Math.floor(220 / B)), 14);
  for (let b = 0; b < B; b++) for (let c = 0; c < C; c++) {
    ic.fillStyle = diverge(d.importance[b][c], m); ic.fillRect(b, c, 1, 1);
  }
  $('importance-labels').replaceChildren(...d.classes.map((c) => {
    const div = document.createElement('div'); div.textContent = c; div.title = c; return div;
  }));
  $('importance-block').textContent = d.block === 1 ? 'one step' : `${d.block} steps`;
  $('median').textContent = d.classes.map((c) => `${c}: ` +
    (d.median_decided_at[c] == null ? '-' : `step ${d.median_decided_at[c] + 1}`)).join(' · ');
}

function show() {
  const it = items[current];
  $('title').textContent = `${it.model} (${it.view} view) reading ` +
    (it.index == null ? 'your image' : `test image ${it.index}`) +
    (it.label == null ? '' : `, a ${it.label}`) + `: it answers ${it.prediction} ` +
    `(${(100 * Math.max(...it.probabilities)).toFixed(1)}%)`;
  const seq = it.steps != null;
  $('stepper').style.display = seq ? '' : 'none';
  for (const id of ['belief-panel', 'steps-panel']) $(id).style.display = seq ? '' : 'none';
  $('no-steps').style.display = seq ? 'none' : '';
  $('input-note').textContent = seq
    ? `Bright: read so far; the marker is the current step. This ${it.view} view reads ` +
      `${it.steps} steps in the order it names (rows top to bottom, columns left to right, ` +
      'pixels one by one).'
    : 'The image as the model sees it: all of it at once, with no steps.';
  if (seq) {
    $('step').max = it.steps; step = Math.min(Math.max(step, 1), it.steps); $('step').value = step;
    $('step-label').textContent = `step ${step} of ${it.steps}`;
    $('decided').textContent = `It knew from step ${it.decided_at + 1}: from there on, ${it.prediction} stays on top.`;
    drawBelief(it); drawBars('occlusion', it.occlusion, 'occlusion');
    drawBars('attribution', it.attribution, 'integrated gradients'); drawStates(it);
  } else { step = 1; $('states-panel').style.display = 'none'; }
  drawInput(it); drawSaliency(it); drawDataset(it);
}

function seqmnistExplain(data) {   // draw explain.json's images; callable again with new data
  items = data.images.filter((it) => !it.error);
  datasets = data.datasets || {};
  current = 0; step = 1;
  if (timer) { clearInterval(timer); timer = null; $('play').textContent = 'Play'; }
  const pick = $('pick');
  pick.replaceChildren();
  items.forEach((it, i) => {
    const o = document.createElement('option'); o.value = i;
    o.textContent = `${it.index == null ? 'your image' : '#' + it.index}` +
      `${it.label == null ? '' : ' (' + it.label + ')'} - ${it.model}, ${it.view}: ${it.prediction}`;
    pick.append(o);
  });
  if (!wired) {
    wired = true;
    pick.addEventListener('change', () => { current = +pick.value; show(); });
    $('step').addEventListener('input', () => { step = +$('step').value; show(); });
    $('play').addEventListener('click', play);
  }
  if (items.length) show();
}

function play() {
  if (timer) { clearInterval(timer); timer = null; $('play').textContent = 'Play'; return; }
  const it = items[current]; if (it.steps == null) return;
  if (step >= it.steps) step = 0;
  $('play').textContent = 'Pause';
  timer = setInterval(() => {
    step += 1; show();
    if (step >= items[current].steps) { clearInterval(timer); timer = null; $('play').textContent = 'Play'; }
  }, Math.max(15, 3000 / it.steps));
}

window.seqmnistExplain = seqmnistExplain;
const embedded = document.getElementById('explain-data');
if (embedded) seqmnistExplain(JSON.parse(embedded.textContent));
})();
