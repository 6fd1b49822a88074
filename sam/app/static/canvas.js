// The SAM canvas (runs as gr.HTML's js_on_load, given element, trigger, props, server, upload, watch).
// The image is shown from the user's own file (or sent once for examples); each click or hover asks the
// server (server.sam_act) for small 1-bit PNG masks, which are coloured and drawn here over the image.
// Requests go one at a time, clicks before hovers, so the server never sees one page's actions out of order.
const root = element.querySelector('.sam-canvas');
const q = (sel) => root.querySelector(sel);
const img = q('.sam-img');
const overlay = q('.sam-overlay');
const ctx = overlay.getContext('2d');
const CANDIDATE = '#1e90ff';
const HOVER = '#ffd400';
const DRAG_PX = 6; // pointer travel that turns a click into a box
const HOVER_MS = 30; // resting time before a hover preview is asked for
const TIMEOUT_MS = 120000;

const S = {
  token: null, width: 0, height: 0, ready: false, rid: 0,
  prompts: [], candidates: [], selected: 0, objects: [], objectsVersion: -1,
  hover: null, hoverId: 0, hoverTimer: null, negative: false, hoverOn: true,
  drag: null, queue: [], pendingHover: null, inflight: null, seq: 0,
  timings: [], layers: new Map(), message: '', error: false,
  everything: null, everythingOn: false, // "segment everything": a label image, shown or not
  pending: null, // an upload the server has not accepted yet: {rid, url, prev: {src, width, height}}
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
  S.layers.set(key, c);
  return c;
}

function pruneLayers() {
  const used = new Set();
  for (const m of [...S.candidates, ...S.objects, S.hover]) if (m && m.layer) used.add(m.layer.dataset.key);
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
  if (S.everything && S.everythingOn) paint(S.everything.layer, 0.55);
  for (const o of S.objects) paint(o.layer, 0.45);
  const cand = S.candidates[S.selected];
  if (cand && cand.layer) paint(cand.layer, 0.5);
  if (S.hover && S.hoverOn) paint(S.hover.layer, 0.4);
  ctx.globalAlpha = 1;
  const sx = W / S.width, sy = H / S.height, dpr = window.devicePixelRatio || 1;
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
  updateDom();
}

function updateDom() {
  const d = root.dataset;
  d.ready = S.ready ? '1' : '0';
  d.candidates = String(S.candidates.length);
  d.selected = String(S.selected);
  d.objects = String(S.objects.length);
  d.prompts = String(S.prompts.length);
  d.hover = S.hover && S.hoverOn ? '1' : '0';
  d.busy = S.inflight ? '1' : '0';
  q('.sam-empty').hidden = !!S.width;
  const msg = q('.sam-message');
  msg.textContent = S.message;
  msg.classList.toggle('sam-error', S.error);
}

function renderCandidates() {
  const box = q('.sam-candidates');
  box.replaceChildren();
  if (S.candidates.length < 2) return;
  S.candidates.forEach((c, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'sam-cand' + (i === S.selected ? ' sam-active' : '');
    b.textContent = 'Mask ' + (i + 1) + ' · IoU ' + c.score.toFixed(2);
    b.addEventListener('click', async () => {
      S.selected = i;
      renderCandidates();
      if (!c.layer) await c.ready;
      draw();
      enqueue({ type: 'choose', index: i });
    });
    box.appendChild(b);
  });
}

function renderObjects() {
  const list = q('.sam-objects');
  list.replaceChildren();
  S.objects.forEach((o, i) => {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = 'sam-swatch';
    sw.style.background = o.color;
    const name = document.createElement('span');
    name.className = 'sam-obj-name';
    name.textContent = o.name + ' · IoU ' + o.score.toFixed(2) + ' · ' + o.area + ' px';
    const del = document.createElement('button');
    del.type = 'button';
    del.className = 'sam-del';
    del.title = 'Delete ' + o.name;
    del.textContent = '×';
    del.addEventListener('click', () => enqueue({ type: 'delete', index: i }));
    li.append(sw, name, del);
    list.appendChild(li);
  });
}

function say(text, error = false) { S.message = text || ''; S.error = !!error && !!text; updateDom(); }

// ---- talking to the server -------------------------------------------------------------------------------
function enqueue(action) {
  if (!S.ready) return say('Upload an image or pick an example first.', true);
  action.seq = ++S.seq;
  action.t0 = action.t0 || performance.now();
  S.queue.push(action);
  pump();
}

function requestHover(x, y, t0) {
  S.pendingHover = { type: 'hover', x, y, hid: ++S.hoverId, t0 };
  pump();
}

function timeout(ms) { return new Promise((_, reject) => setTimeout(() => reject(new Error('no answer in ' + ms / 1000 + ' s')), ms)); }

async function pump() {
  if (S.inflight || !S.ready) return;
  const req = S.queue.length ? S.queue.shift() : S.pendingHover;
  if (!req) return;
  if (req === S.pendingHover) S.pendingHover = null;
  S.inflight = req;
  updateDom();
  const { t0, hid, ...body } = req;
  body.token = S.token;
  body.objects_version = S.objectsVersion;
  let res;
  try {
    res = await Promise.race([server.sam_act(body), timeout(TIMEOUT_MS)]);
  } catch (e) {
    res = { error: 'The server did not answer: ' + (e && e.message ? e.message : e) };
  }
  req.answered = performance.now();
  try {
    await apply(req, res || {});
  } catch (e) {
    console.error(e);
    say('Could not draw the answer: ' + e, true);
  }
  S.inflight = null;
  updateDom();
  pump();
}

async function masks(list, color) {
  return Promise.all((list || []).map(async (m) => ({ ...m, layer: await layer(m.png, color || m.color) })));
}

// The selected candidate is decoded before the answer is drawn; the others, one click away, after it.
async function candidateMasks(list, selected) {
  const cands = (list || []).map((m) => ({ ...m, layer: null }));
  const first = cands[selected];
  if (first) first.layer = await layer(first.png, CANDIDATE);
  for (const c of cands) if (!c.layer) c.ready = layer(c.png, CANDIDATE).then((l) => { c.layer = l; });
  return cands;
}

async function apply(req, res) {
  if (res.error) {
    if (res.expired) { S.ready = false; S.token = null; }
    if (req.type !== 'hover') say(res.error, true);
    return;
  }
  if (req.type === 'hover') {
    if (req.hid !== S.hoverId || S.queue.length || !S.hoverOn || S.drag) return; // the cursor moved on
    const hover = (await masks([res.hover], HOVER))[0];
    if (req.hid !== S.hoverId) return;
    S.hover = { ...hover, x: req.x, y: req.y };
    draw();
    record('hover', req, res);
    return;
  }
  await applyState(res);
  record(req.type, req, res);
  if (req.type === 'add' && !res.error) q('.sam-name').value = '';
}

async function applyState(v) {
  const [cands, objs] = await Promise.all([
    'candidates' in v ? candidateMasks(v.candidates, 'selected' in v ? v.selected : S.selected) : null,
    'objects' in v ? masks(v.objects) : null,
  ]);
  if (v.everything) await setEverything(v.everything);
  if (cands) S.candidates = cands;
  if (objs) { S.objects = objs; S.objectsVersion = v.objects_version; renderObjects(); }
  if ('prompts' in v) S.prompts = v.prompts;
  if ('selected' in v) S.selected = v.selected;
  if ('candidates' in v || 'prompts' in v) S.hover = null;
  renderCandidates();
  pruneLayers();
  say(v.message || '');
  draw();
}

async function setEverything(e) {
  S.everything = null;
  if (e.png) {
    const im = new Image();
    im.src = e.png;
    await im.decode();
    const c = document.createElement('canvas');
    c.width = im.naturalWidth;
    c.height = im.naturalHeight;
    c.getContext('2d', { willReadFrequently: true }).drawImage(im, 0, 0);
    const index = new Map(e.colors.map((hex, i) => [parseInt(hex.slice(1), 16), i]));
    S.everything = { layer: c, index, count: e.colors.length };
  }
  S.everythingOn = !!S.everything;
  everythingButton();
}

// The everything mask under image pixel (x, y): its index, or -1.
function labelAt(x, y) {
  const e = S.everything;
  if (!e) return -1;
  const px = Math.min(e.layer.width - 1, Math.floor((x * e.layer.width) / S.width));
  const py = Math.min(e.layer.height - 1, Math.floor((y * e.layer.height) / S.height));
  const d = e.layer.getContext('2d').getImageData(px, py, 1, 1).data;
  if (d[3] === 0) return -1;
  const i = e.index.get((d[0] << 16) | (d[1] << 8) | d[2]);
  return i === undefined ? -1 : i;
}

function everythingButton() {
  q('.sam-everything').textContent = S.everything && S.everythingOn ? 'Hide everything' : 'Everything';
}

// ms: from the user's action to the answer drawn; answer_ms: to the answer received; server_ms: the server's work.
function record(type, req, res) {
  if (!req.t0) return;
  S.timings.push({ type, ms: performance.now() - req.t0, answer_ms: req.answered - req.t0, server_ms: res.ms });
  if (S.timings.length > 1000) S.timings.shift();
}

// A new view from a queued event (image upload, example, model change): props.value is set by Python.
watch('value', async () => {
  const v = props.value;
  if (!v || typeof v !== 'object') return;
  if (v.rid && v.rid !== S.rid) return; // an answer to an upload that was replaced since
  if (!v.rid && v.image && v.image.src) S.rid++; // an example replaces any upload still on its way
  q('.sam-busy').hidden = true;
  if (v.error) {
    if (S.pending && v.rid === S.pending.rid) restorePrevious();
    return say(v.error, true);
  }
  if (!v.token || !v.image) return;
  S.pending = null;
  const fresh = v.token !== S.token || v.image.key !== S.imageKey;
  S.token = v.token;
  S.imageKey = v.image.key;
  S.width = v.image.width;
  S.height = v.image.height;
  if (v.image.src) {
    img.src = v.image.src;
    try { await img.decode(); } catch (e) { return say('The browser could not show this image.', true); }
  }
  if (fresh) { S.queue = []; S.pendingHover = null; S.hover = null; S.everything = null; S.everythingOn = false; everythingButton(); }
  S.ready = true;
  await applyState(v);
});

// ---- loading images ---------------------------------------------------------------------------------------
// A new file is shown at once, but it replaces the current image, prompts and objects only when the server
// has read it: when it cannot (a damaged file, too many pixels...) the page goes back to what it had.
async function loadFile(file) {
  if (!file) return;
  if (!file.type || !file.type.startsWith('image/')) return say('That is not an image file.', true);
  const url = URL.createObjectURL(file);
  const probe = new Image();
  probe.src = url;
  const wasReady = S.ready;
  S.ready = false; // no prompts until the new image is in
  updateDom();
  try {
    await probe.decode();
  } catch (e) {
    URL.revokeObjectURL(url);
    S.ready = wasReady;
    return say('The browser cannot show this image; try a PNG or JPEG.', true);
  }
  const rid = ++S.rid;
  if (!S.pending) S.pending = { prev: { src: img.getAttribute('src'), width: S.width, height: S.height } };
  Object.assign(S.pending, { rid, url });
  img.src = url;
  S.width = probe.naturalWidth;
  S.height = probe.naturalHeight;
  draw();
  const busy = q('.sam-busy');
  busy.hidden = false;
  busy.textContent = 'Uploading…';
  say('');
  try {
    const { path } = await upload(file);
    if (rid !== S.rid) return;
    busy.textContent = 'Computing the image embedding…';
    trigger('image', { path, name: file.name || 'image', rid });
  } catch (e) {
    if (rid !== S.rid) return;
    busy.hidden = true;
    restorePrevious();
    say('Upload failed: ' + (e && e.message ? e.message : e), true);
  }
}

function restorePrevious() {
  const { prev } = S.pending;
  S.pending = null;
  if (prev.src) img.src = prev.src; else img.removeAttribute('src');
  S.width = prev.width;
  S.height = prev.height;
  S.ready = !!S.token;
  draw();
}

const fileInput = q('.sam-file');
q('.sam-upload').addEventListener('click', () => fileInput.click());
fileInput.addEventListener('change', () => { loadFile(fileInput.files[0]); fileInput.value = ''; });
const stage = q('.sam-stage');
stage.addEventListener('dragover', (e) => { e.preventDefault(); stage.classList.add('sam-drop'); });
stage.addEventListener('dragleave', () => stage.classList.remove('sam-drop'));
stage.addEventListener('drop', (e) => {
  e.preventDefault();
  stage.classList.remove('sam-drop');
  loadFile(e.dataTransfer && e.dataTransfer.files[0]);
});
document.addEventListener('paste', (e) => {
  if (!document.body.contains(root)) return;
  const t = e.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
  const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith('image/'));
  if (item) { e.preventDefault(); loadFile(item.getAsFile()); }
});

// ---- pointer: click = point, drag = box, rest = hover preview ---------------------------------------------
function toImage(e) {
  const r = overlay.getBoundingClientRect();
  const x = ((e.clientX - r.left) * S.width) / r.width;
  const y = ((e.clientY - r.top) * S.height) / r.height;
  const r2 = (v) => Math.round(v * 100) / 100; // the server echoes 2 decimals: send exactly those
  return [r2(Math.min(Math.max(x, 0), S.width)), r2(Math.min(Math.max(y, 0), S.height))];
}

overlay.addEventListener('contextmenu', (e) => e.preventDefault());
overlay.addEventListener('pointerdown', (e) => {
  if (!S.ready || (e.button !== 0 && e.button !== 2)) return;
  e.preventDefault();
  overlay.setPointerCapture(e.pointerId);
  clearTimeout(S.hoverTimer);
  const [x, y] = toImage(e);
  S.drag = { x, y, cx: e.clientX, cy: e.clientY, button: e.button, moved: false, box: null };
});
overlay.addEventListener('pointermove', (e) => {
  if (!S.ready) return;
  const [x, y] = toImage(e);
  if (S.drag) {
    const d = S.drag;
    if (!d.moved && Math.hypot(e.clientX - d.cx, e.clientY - d.cy) > DRAG_PX && d.button === 0) d.moved = true;
    if (d.moved) {
      d.box = [Math.min(d.x, x), Math.min(d.y, y), Math.max(d.x, x), Math.max(d.y, y)];
      S.hover = null;
      draw();
    }
    return;
  }
  if (!S.hoverOn || (S.everything && S.everythingOn)) return;
  const t0 = performance.now();
  clearTimeout(S.hoverTimer);
  S.hoverTimer = setTimeout(() => requestHover(x, y, t0), HOVER_MS);
});
overlay.addEventListener('pointerup', (e) => {
  const d = S.drag;
  if (!d) return;
  S.drag = null;
  const t0 = performance.now();
  if (d.moved && d.box) {
    enqueue({ type: 'box', box: d.box, t0 });
  } else if (S.everything && S.everythingOn) {
    const i = labelAt(d.x, d.y); // with everything shown, a click picks the mask under it
    if (i >= 0) enqueue({ type: 'pick', index: i, t0 });
  } else {
    const negative = d.button === 2 || S.negative;
    enqueue({ type: 'point', x: d.x, y: d.y, label: negative ? 0 : 1, t0 });
  }
  S.hover = null;
  S.hoverId++;
  draw();
});
overlay.addEventListener('pointerleave', () => {
  clearTimeout(S.hoverTimer);
  S.hoverId++;
  if (S.hover) { S.hover = null; draw(); }
});

// ---- toolbar ---------------------------------------------------------------------------------------------
const modeBtn = q('.sam-mode');
function setMode(negative) {
  S.negative = negative;
  modeBtn.textContent = negative ? '− Negative point' : '+ Positive point';
  modeBtn.setAttribute('aria-pressed', negative ? 'true' : 'false');
  modeBtn.classList.toggle('sam-negative', negative);
}
modeBtn.addEventListener('click', () => setMode(!S.negative));
q('.sam-hover-toggle').addEventListener('change', (e) => {
  S.hoverOn = e.target.checked;
  if (!S.hoverOn) { S.hover = null; S.hoverId++; draw(); }
});
q('.sam-undo').addEventListener('click', () => enqueue({ type: 'undo' }));
q('.sam-everything').addEventListener('click', () => {
  if (!S.ready) return say('Upload an image or pick an example first.', true);
  if (S.everything) {
    S.everythingOn = !S.everythingOn;
    everythingButton();
    return draw();
  }
  const busy = q('.sam-busy');
  busy.hidden = false;
  busy.textContent = 'Segmenting everything…';
  trigger('everything', { token: S.token });
});
q('.sam-clear').addEventListener('click', () => enqueue({ type: 'clear' }));
q('.sam-add').addEventListener('click', () => enqueue({ type: 'add', name: q('.sam-name').value }));
q('.sam-name').addEventListener('keydown', (e) => { if (e.key === 'Enter') q('.sam-add').click(); });
root.addEventListener('keydown', (e) => {
  const t = e.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA')) return;
  if ((e.ctrlKey || e.metaKey) && e.key === 'z') { e.preventDefault(); enqueue({ type: 'undo' }); }
  else if (e.key === 'n') setMode(!S.negative);
});
new ResizeObserver(() => draw()).observe(img);
setMode(false);
updateDom();

// For tests and benchmarks: read what is drawn without reaching into the closure.
root.samDebug = {
  state: () => ({
    ready: S.ready, width: S.width, height: S.height, prompts: S.prompts, selected: S.selected,
    scores: S.candidates.map((c) => c.score), objects: S.objects.map((o) => ({ name: o.name, color: o.color })),
    everything: S.everything ? { count: S.everything.count, shown: S.everythingOn } : null,
    hover: S.hover ? { x: S.hover.x, y: S.hover.y, score: S.hover.score } : null, message: S.message, error: S.error, busy: !!S.inflight || S.queue.length > 0,
  }),
  timings: () => S.timings.slice(),
  labelAt: (x, y) => labelAt(x, y),
  // The drawn overlay's RGBA at image pixel (x, y).
  pixelAt: (x, y) => {
    const px = Math.floor((x * overlay.width) / S.width), py = Math.floor((y * overlay.height) / S.height);
    return [...ctx.getImageData(px, py, 1, 1).data];
  },
  // A mask layer ('candidate', 'hover' or an object index) as {width, height, count, box: [x0, y0, x1, y1]}.
  maskInfo: (which) => {
    const m = which === 'candidate' ? S.candidates[S.selected] : which === 'hover' ? S.hover : S.objects[which];
    if (!m || !m.layer) return null;
    const c = m.layer, data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let count = 0, x0 = c.width, y0 = c.height, x1 = -1, y1 = -1;
    for (let i = 3, p = 0; i < data.length; i += 4, p++) {
      if (data[i] === 0) continue;
      count++;
      const x = p % c.width, y = (p - x) / c.width;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
    return { width: c.width, height: c.height, count, box: count ? [x0, y0, x1 + 1, y1 + 1] : null };
  },
};
