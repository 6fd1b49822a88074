// The SAM canvas: gr.HTML's js_on_load (given element, trigger, props, server, upload, watch), in five files
// sharing one scope: canvas.js (state, masks, drawing, long jobs), server.js (requests and the server's
// answers), decoder.js (decoding in the browser), panel.js (candidate masks, objects, segment everything) and
// input.js (pointer, touch, keys, toolbar, image files).
// The image is shown from the user's own file (or sent once for examples); each click or hover asks the
// server (server.sam_act) for small 1-bit PNG masks, which are coloured and drawn here over the image; or,
// once decoder.js has what it needs, hovers are answered here and clicks only reported to the server.
// Requests go one at a time, clicks before hovers, so the server never sees one page's actions out of order.
// Each request names the image it was made on, and answers about another image are dropped.
const root = element;
root.classList.add('sam-canvas');
const q = (sel) => root.querySelector(sel);
const img = q('.sam-img');
const overlay = q('.sam-overlay');
const ctx = overlay.getContext('2d');
const stage = q('.sam-stage');
const CANDIDATE = '#1e90ff';
const HOVER = '#ffd400';
const DRAG_PX = 6; // pointer travel that turns a click into a box
const HOVER_MS = 30; // resting time before a hover preview is asked for
const TIMEOUT_MS = 120000;
const OPACITY = 35; // objects' fill, percent (each object has its own slider)
const BUSY_NOTE = {
  image: 'Wait: the image is still loading.',
  everything: 'Wait: segment everything is running (or press Cancel).',
};

const S = {
  token: null, imageKey: null, imageName: '', width: 0, height: 0, ready: false, rid: 0, images: 0,
  prompts: [], candidates: [], selected: 0, model: '',
  first: [], firstSelected: 0, firstVersion: -1, // the first click's three masks, while later prompts refine one
  objects: [], objectsVersion: -1, styles: new Map(), // object id -> {hidden, opacity}
  hover: null, hoverId: 0, hoverTimer: null, mode: 'positive', hoverOn: true,
  drag: null, queue: [], pendingHover: null, inflight: null, seq: 0,
  timings: [], layers: new Map(), message: '', error: false,
  everything: null, everythingOn: false, under: -1, // segment everything: label image, shown, mask under cursor
  job: null, runs: 0, // a long job: {kind: 'image' | 'everything', t0, text, run, progress}
  pending: null, // an upload the server has not accepted yet: {rid, url, t0, prev: {src, width, height}}
  cursor: null, pointerIn: false, // the keyboard's cursor (image pixels); the pointer is over the tool
  thumb: null, // the image at the thumbnails' size: {src, canvas} (panel.js, thumbBase)
};

// ---- masks -----------------------------------------------------------------------------------------
async function layer(url, color) {
  const key = color + '|' + url;
  let c = S.layers.get(key);
  if (c) return c;
  const im = new Image();
  im.src = url;
  await im.decode();
  c = document.createElement('canvas');
  c.width = im.naturalWidth;
  c.height = im.naturalHeight;
  const g = c.getContext('2d', { willReadFrequently: true });
  g.drawImage(im, 0, 0);
  g.globalCompositeOperation = 'source-in'; // keep the mask's alpha, paint it one colour
  g.fillStyle = color;
  g.fillRect(0, 0, c.width, c.height);
  c.dataset.key = key;
  c.dataset.color = color;
  S.layers.set(key, c);
  return c;
}

// The mask's edge, 2 mask pixels wide, in its colour (made once per layer).
function outline(c) {
  if (c.outline) return c.outline;
  const o = document.createElement('canvas');
  o.width = c.width;
  o.height = c.height;
  const g = o.getContext('2d');
  for (const [dx, dy] of [[-2, 0], [2, 0], [0, -2], [0, 2], [-1, -1], [1, 1], [-1, 1], [1, -1]]) g.drawImage(c, dx, dy);
  g.globalCompositeOperation = 'destination-out';
  g.drawImage(c, 0, 0);
  c.outline = o;
  return o;
}

function pruneLayers() {
  const used = new Set();
  const all = [...S.candidates, ...S.first, ...S.objects, S.hover];
  for (const m of all) if (m && m.layer) used.add(m.layer.dataset.key);
  for (const k of [...S.layers.keys()]) if (!used.has(k)) S.layers.delete(k);
}

// ---- drawing ------------------------------------------------------------------------------------------
function fitOverlay() {
  const r = img.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
  if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
}

function draw() {
  fitOverlay();
  const W = overlay.width, H = overlay.height;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, W, H);
  if ((!S.ready && !S.width) || S.pending) return updateDom();
  ctx.imageSmoothingEnabled = false;
  const paint = (c, alpha) => { ctx.globalAlpha = alpha; ctx.drawImage(c, 0, 0, W, H); };
  if (S.everything && S.everythingOn) {
    paint(S.everything.layer, 0.45);
    const h = S.under >= 0 ? highlight(S.under) : null;
    if (h) { paint(h, 0.35); paint(outline(h), 1); }
  }
  for (const o of S.objects) {
    const style = objectStyle(o);
    if (style.hidden) continue;
    paint(o.layer, style.opacity / 100);
    paint(outline(o.layer), 1);
  }
  const cand = S.candidates[S.selected];
  if (cand && cand.layer) { paint(cand.layer, 0.45); paint(outline(cand.layer), 1); }
  if (S.hover && S.hoverOn) paint(S.hover.layer, 0.4);
  ctx.globalAlpha = 1;
  drawPrompts(W / S.width, H / S.height, window.devicePixelRatio || 1);
  updateDom();
}

function drawPrompts(sx, sy, dpr) {
  const box = S.drag && S.drag.moved ? S.drag.box : (S.prompts.filter((p) => p.kind === 'box').pop() || {}).coords;
  if (box) {
    ctx.lineWidth = 2 * dpr;
    ctx.setLineDash([6 * dpr, 4 * dpr]);
    ctx.strokeStyle = '#ffffff';
    ctx.strokeRect(box[0] * sx, box[1] * sy, (box[2] - box[0]) * sx, (box[3] - box[1]) * sy);
    ctx.setLineDash([]);
  }
  for (const p of S.prompts) {
    if (p.kind !== 'point') continue;
    ctx.beginPath();
    ctx.arc(p.coords[0] * sx, p.coords[1] * sy, 5 * dpr, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? '#22c55e' : '#ef4444';
    ctx.fill();
    ctx.lineWidth = 1.5 * dpr;
    ctx.strokeStyle = '#ffffff';
    ctx.stroke();
  }
  if (S.cursor && document.activeElement === stage) { // the keyboard's cursor: a cross, white on black
    const x = S.cursor.x * sx, y = S.cursor.y * sy, r = 9 * dpr;
    for (const [color, width] of [['#000000', 4], ['#ffffff', 2]]) {
      ctx.beginPath();
      ctx.moveTo(x - r, y); ctx.lineTo(x + r, y); ctx.moveTo(x, y - r); ctx.lineTo(x, y + r);
      ctx.lineWidth = width * dpr;
      ctx.strokeStyle = color;
      ctx.stroke();
    }
  }
}

function updateDom() {
  liveStatus(); // the status line may be rendered (or rendered again) after the page's first second
  const d = root.dataset;
  d.ready = S.ready ? '1' : '0';
  d.candidates = String(S.candidates.length);
  d.selected = String(S.selected);
  d.objects = String(S.objects.length);
  d.prompts = String(S.prompts.length);
  d.hover = S.hover && S.hoverOn ? '1' : '0';
  d.busy = S.inflight ? '1' : '0';
  d.job = S.job ? S.job.kind : '';
  q('.sam-empty').hidden = !!S.width;
  const msg = q('.sam-message');
  if (msg.textContent !== S.message) msg.textContent = S.message;
  msg.classList.toggle('sam-error', S.error);
  img.alt = S.imageName ? 'The image to segment: ' + S.imageName : '';
}

function say(text, error = false) { S.message = text || ''; S.error = !!error && !!text; updateDom(); }

// ---- long jobs: an image loading, segment everything ---------------------------------------------------
// While one runs the canvas shows what it is, for how long, and (segment everything) how far it is, with a
// Cancel; clicks and keys are refused with a note, and nothing queued for the previous image is sent.
function startJob(kind, text) {
  endJob();
  S.job = { kind, t0: performance.now(), text, run: kind === 'everything' ? ++S.runs : null, progress: null };
  S.queue = [];
  S.pendingHover = null;
  S.hover = null;
  S.hoverId++;
  S.drag = null;
  clearTimeout(S.hoverTimer);
  S.job.timer = setInterval(tickJob, 250);
  if (kind === 'everything') S.job.poll = setInterval(pollProgress, 500);
  q('.sam-busy-text').textContent = text;
  tickJob();
  draw();
}

function jobText(text) {
  if (!S.job) return;
  S.job.text = text;
  q('.sam-busy-text').textContent = text;
  tickJob();
}

function tickJob() {
  const j = S.job;
  q('.sam-busy').hidden = !j;
  if (!j) return;
  // No answer (the queue refused the event, or the connection dropped): the page is not left waiting.
  const now = performance.now();
  if ((j.kind === 'image' && now - j.t0 > TIMEOUT_MS) || (j.over && now - j.over > 10000)) {
    endJob();
    return say('The server did not answer; try again.', true);
  }
  const seconds = Math.floor((now - j.t0) / 1000);
  const bar = q('.sam-progress');
  const [done, total] = j.progress || [0, 0];
  bar.hidden = j.kind !== 'everything';
  if (total) bar.value = done / total; else bar.removeAttribute('value'); // no value: "working", no amount
  q('.sam-busy-time').textContent = (total ? done + ' of ' + total + ' points · ' : '') + seconds + ' s';
  q('.sam-cancel').hidden = j.kind !== 'everything';
}

function endJob() {
  if (!S.job) return;
  clearInterval(S.job.timer);
  clearInterval(S.job.poll);
  S.job = null;
  tickJob();
  updateDom();
}

async function pollProgress() {
  const j = S.job;
  if (!j || j.kind !== 'everything' || j.polling) return;
  j.polling = true;
  try {
    const res = await server.sam_act({ type: 'progress', token: S.token });
    if (S.job === j && res && res.progress) j.progress = res.progress;
    if (res && res.job === 'everything') j.running = true;
    else if (j.running && !j.over) j.over = performance.now(); // the run ended: its answer is on its way
  } catch (e) { /* the next poll tries again */ }
  j.polling = false;
  tickJob();
}

function refuseDuringJob() {
  if (!S.job) return false;
  say(BUSY_NOTE[S.job.kind], true);
  return true;
}
