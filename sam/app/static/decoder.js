// ---- decoding in the browser (part of the canvas's script; see canvas.js) -----------------------------------
// With ONNX Runtime Web, the model's prompt encoder + mask decoder as ONNX (two graphs fetched once per model)
// and the image's embedding (fetched once per image, float16), the page answers hovers itself and computes the
// candidate masks of its prompts. The server still keeps the prompts and the choices of candidate (requests
// marked `local`, recorded without decoding) and answers with them; the masks are computed here from that
// answer, by the same steps as the server's session (sam/app/session.py), and drawn as the server would
// draw them: the low-res logits upsampled to the model input, cropped, resized to the display size
// (bilinear, align_corners=False, as F.interpolate) and thresholded. Until all of it has loaded, and for
// good when the runtime cannot load, every request goes to the server as before.
const LD = {
  cfg: null, // the view's `local`: {ort, integrity, graph, image_graph, embedding, model, shape, input, display, ...}
  failed: false, // the runtime could not load: server decoding from now on
  runtime: null, // Promise of the loaded runtime
  webgpu: false, // the browser has a WebGPU adapter: the runtime's WebGPU build, decoding on the GPU
  threads: 0, // wasm threads of the runtime (1 unless the page is cross-origin isolated)
  graphs: new Map(), // graph URL -> Promise<InferenceSession>
  session: null,
  embedding: null, // {key, model, tensor, side: the image graph's output}
  ready: false,
  cache: new Map(), // decode inputs -> {masks: [Float32Array], scores: [number]} (most recent last)
  chain: Promise.resolve(), // decodes run one at a time
  current: null, // the last step of the prompts shown: {key, masks, scores, selected}
  steps: [], // every step of the prompts shown: [{key, res, emb}]
  runs: 0, // decodes run (for tests)
  version: 0, // bumped with each new state, so that an older hover preview is not drawn over it
  hoverReq: null, hoverBusy: false,
  layerId: 0,
  decodeMs: 0, // time in ONNX Runtime since the last timing was recorded (for the benchmark)
  tables: new Map(), // bilinear index and weight tables by sizes
  scratch: [], // float32 buffers of maskLayer
  half: null, // float16 bits -> float32
};
const LOCAL_TYPES = ['point', 'box', 'undo', 'choose', 'choose_first'];
const CACHE_ITEMS = 24;
const MAX_PROMPTS_LOCAL = 64; // sam/app/settings.py MAX_PROMPTS

function localActive() {
  return LD.ready && !LD.failed && !!LD.embedding && LD.embedding.key === S.imageKey && LD.cfg.model === LD.embedding.model;
}

function decodeMode() { root.dataset.decode = localActive() ? 'browser' : 'server'; }

// A new view's `local` (null: this model decodes on the server). Loads what is missing, in the background.
async function prepareLocal(cfg) {
  LD.ready = false;
  LD.cfg = cfg;
  LD.current = null;
  LD.steps = [];
  decodeMode();
  if (!cfg || LD.failed) return;
  const key = S.imageKey, token = S.token;
  try {
    const ortLib = await loadRuntime(cfg);
    const [session, imageGraph] = await Promise.all([graph(ortLib, cfg.graph), graph(ortLib, cfg.image_graph)]);
    const tensor = await fetchEmbedding(ortLib, cfg, key, token);
    if (LD.cfg !== cfg || S.imageKey !== key) return; // another image or model since
    // The decoder's first layer's view of the image, the same for every prompt (sam/onnx.py): once per image.
    const run = LD.chain.then(() => imageGraph.run({ image_embeddings: tensor })); // after any decode running
    LD.chain = run.catch(() => null);
    const side = (await run).image_side;
    if (LD.cfg !== cfg || S.imageKey !== key) return;
    LD.session = session;
    LD.embedding = { key, model: cfg.model, tensor, side };
    LD.cache.clear();
    LD.ready = true;
  } catch (e) {
    console.warn('Decoding on the server: ' + (e && e.message ? e.message : e));
  }
  decodeMode();
}

// ort.min.js (WebGPU and wasm) where the browser has a WebGPU adapter, else ort.wasm.min.js (half the bytes).
async function webgpu() {
  try { return !!(navigator.gpu && (await navigator.gpu.requestAdapter())); } catch (e) { return false; }
}

function loadRuntime(cfg) {
  if (LD.runtime) return LD.runtime;
  LD.runtime = webgpu().then((gpu) => new Promise((resolve, reject) => {
    if (window.ort) return resolve(window.ort);
    const file = gpu ? 'ort.min.js' : 'ort.wasm.min.js', s = document.createElement('script');
    LD.webgpu = gpu;
    s.src = cfg.ort + file;
    if (cfg.integrity) { s.integrity = cfg.integrity[file]; s.crossOrigin = 'anonymous'; }
    s.onload = () => (window.ort ? resolve(window.ort) : reject(new Error('no ort in ' + s.src)));
    s.onerror = () => reject(new Error('could not load ' + s.src));
    document.head.appendChild(s);
  })).then((lib) => {
    lib.env.wasm.wasmPaths = cfg.ort;
    // Threads need a cross-origin isolated page (sam/app/isolation.py): the app's page opened at its own
    // address, not inside a Space's iframe.
    lib.env.wasm.numThreads = LD.threads = window.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    return lib;
  });
  LD.runtime.catch(() => { LD.failed = true; decodeMode(); });
  return LD.runtime;
}

function graph(lib, url) {
  if (!LD.graphs.has(url)) {
    const providers = LD.webgpu ? ['webgpu', 'wasm'] : ['wasm'];
    const p = lib.InferenceSession.create(url, { executionProviders: providers });
    p.catch(() => LD.graphs.delete(url)); // tried again with the next image
    LD.graphs.set(url, p);
  }
  return LD.graphs.get(url);
}

async function fetchEmbedding(lib, cfg, key, token) {
  const url = cfg.embedding + '?key=' + encodeURIComponent(key) + '&model=' + encodeURIComponent(cfg.model);
  const res = await fetch(url, { headers: { 'X-Sam-Token': token } });
  if (!res.ok) throw new Error('embedding: HTTP ' + res.status);
  const bits = new Uint16Array(await res.arrayBuffer());
  const [c, h, w] = cfg.shape;
  if (bits.length !== c * h * w) throw new Error('embedding: ' + bits.length + ' values, expected ' + c * h * w);
  const table = halfTable(), data = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) data[i] = table[bits[i]];
  return new lib.Tensor('float32', data, [1, c, h, w]);
}

function halfTable() {
  if (LD.half) return LD.half;
  const t = new Float32Array(65536);
  for (let v = 0; v < 65536; v++) {
    const sign = v & 0x8000 ? -1 : 1, e = (v >> 10) & 0x1f, m = v & 0x3ff;
    t[v] = sign * (e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * 2 ** (e - 15));
  }
  return (LD.half = t);
}

// ---- decoding ---------------------------------------------------------------------------------------------
// Prompts (as the server lists them) -> the graph's feed, as sam/onnx.py's onnx_inputs: points in model-input
// pixels (the image scaled as sam.transforms.ResizeLongestSide), then a box's corners (labels 2, 3) or a
// padding point (label -1).
function feed(lib, prompts, maskInput) {
  const cfg = LD.cfg, [ih, iw] = cfg.input, sx = iw / S.width, sy = ih / S.height;
  const coords = [], labels = [];
  for (const p of prompts) if (p.kind === 'point') { coords.push(p.coords[0] * sx, p.coords[1] * sy); labels.push(p.label); }
  const box = prompts.filter((p) => p.kind === 'box').pop();
  if (box) {
    const [x0, y0, x1, y1] = box.coords;
    coords.push(x0 * sx, y0 * sy, x1 * sx, y1 * sy);
    labels.push(2, 3);
  } else {
    coords.push(0, 0);
    labels.push(-1);
  }
  const n = labels.length, low = 4 * cfg.shape[1];
  return {
    image_embeddings: LD.embedding.tensor,
    image_side: LD.embedding.side,
    point_coords: new lib.Tensor('float32', Float32Array.from(coords), [1, n, 2]),
    point_labels: new lib.Tensor('float32', Float32Array.from(labels), [1, n]),
    mask_input: new lib.Tensor('float32', maskInput || new Float32Array(low * low), [1, 1, low, low]),
    has_mask_input: new lib.Tensor('float32', Float32Array.of(maskInput ? 1 : 0), [1]),
  };
}

// One decode, or its earlier answer: {masks: [low-res logits], scores}; multimask: tokens 1-3, else token 0.
function decode(key, prompts, maskInput, multimask) {
  const hit = LD.cache.get(key);
  if (hit) { LD.cache.delete(key); LD.cache.set(key, hit); return hit; }
  const run = async () => {
    const lib = await LD.runtime, t0 = performance.now();
    const out = await LD.session.run(feed(lib, prompts, maskInput));
    LD.runs++;
    LD.decodeMs += performance.now() - t0;
    const logits = out.low_res_masks.data, iou = out.iou_predictions.data, size = logits.length / 4;
    const picks = multimask ? [1, 2, 3] : [0];
    return { masks: picks.map((i) => logits.slice(i * size, (i + 1) * size)), scores: picks.map((i) => iou[i]) };
  };
  const p = LD.chain.then(run, run);
  LD.chain = p.catch(() => null);
  LD.cache.set(key, p);
  p.catch(() => LD.cache.delete(key));
  while (LD.cache.size > CACHE_ITEMS) LD.cache.delete(LD.cache.keys().next().value);
  return p;
}

const promptKey = (prompts, choices) => JSON.stringify([prompts.map((p) => [p.kind, p.coords, p.label]), choices]);
const argmax = (xs) => xs.reduce((best, x, i) => (x > xs[best] ? i : best), 0);

// The candidates of prompts with the server's choices, step by step as AppSession._step: the first prompt
// alone (three masks if it is a point), then each further prompt refining the candidate chosen before it.
// The steps of the prompts shown are kept apart from the cache (LD.steps), so that a long list of prompts
// does not push its own first steps out of it and make every click decode them all again.
async function localState(prompts, choices) {
  let step = null, first = null;
  const steps = [];
  for (let n = 1; n <= prompts.length; n++) {
    const upto = prompts.slice(0, n), multimask = n === 1 && upto[0].kind === 'point';
    const key = promptKey(upto, choices.slice(0, n - 1)), kept = LD.steps[n - 1], emb = LD.embedding;
    const res = kept && kept.key === key && kept.emb === emb ? kept.res
      : await decode(key, upto, step ? step.masks[step.selected] : null, multimask);
    steps.push({ key, res, emb });
    const choice = choices[n - 1];
    const selected = Number.isInteger(choice) && choice >= 0 && choice < res.scores.length ? choice : argmax(res.scores);
    step = { key, res, masks: res.masks, scores: res.scores, selected, choices: choices.slice(0, n) };
    if (n === 1) first = multimask ? step : null;
  }
  return { step, first, steps };
}

// The candidates and the first click's masks as the panel shows them, from localState.
async function localView(v) {
  const { step, first, steps } = await localState(v.prompts, v.choices || []);
  LD.current = step;
  LD.steps = steps;
  LD.version++;
  const cands = step ? layers(step, CANDIDATE) : [];
  const firstMasks = !first ? [] : first === step ? cands : layers(first, CANDIDATE);
  return { cands, first: firstMasks, selected: step ? step.selected : 0, firstSelected: first ? first.selected : 0 };
}

// What a positive point at (x, y) would give: the request a click there would make (so the click reuses it).
async function localPreview(x, y) {
  const cur = LD.current, prompts = [...S.prompts, { kind: 'point', coords: [x, y], label: 1 }].slice(-MAX_PROMPTS_LOCAL);
  const choices = cur ? cur.choices : [];
  const res = await decode(promptKey(prompts, choices), prompts, cur ? cur.masks[cur.selected] : null, prompts.length === 1);
  const best = argmax(res.scores);
  return { score: res.scores[best], layer: maskLayer(res.masks[best], HOVER, 'hover') };
}

function hoverLocally(x, y, t0) {
  LD.hoverReq = { type: 'hover', x, y, hid: ++S.hoverId, t0, key: S.imageKey, version: LD.version };
  if (!LD.hoverBusy) runHovers();
}

async function runHovers() {
  LD.hoverBusy = true;
  while (LD.hoverReq) {
    const req = LD.hoverReq;
    LD.hoverReq = null;
    if (S.inflight || S.queue.length) continue; // a click is on its way: its answer replaces any preview
    try {
      const hover = await localPreview(req.x, req.y);
      req.answered = performance.now();
      const moved = req.hid !== S.hoverId || req.version !== LD.version || req.key !== S.imageKey;
      if (moved || S.queue.length || S.inflight || !S.hoverOn || S.drag || S.job) continue;
      S.hover = { ...hover, x: req.x, y: req.y };
      draw();
      record('hover', req, { decode: 'browser', decode_ms: takeDecodeMs() });
    } catch (e) {
      localFailed(e);
    }
  }
  LD.hoverBusy = false;
}

function takeDecodeMs() {
  const ms = LD.decodeMs;
  LD.decodeMs = 0;
  return ms;
}

// The page decodes on the server from now on (the server decodes the prompts it only recorded).
function localFailed(e) {
  console.warn('Decoding on the server: ' + (e && e.message ? e.message : e));
  LD.failed = true;
  decodeMode();
}

// Start decoding what the server's answer to `req` will most likely be, while the request travels, and draw it
// as soon as it is decoded if the answer has not come by then. The answer (the prompts the server recorded)
// then finds the same decodes and draws the same masks, or other prompts and draws theirs; an error or a
// refusal puts back what was shown before (unshow).
function speculate(req) {
  const choices = LD.current ? LD.current.choices : [];
  const prompts = S.prompts.slice();
  if (req.type === 'point') prompts.push({ kind: 'point', coords: [req.x, req.y], label: req.label });
  else if (req.type === 'box') prompts.push({ kind: 'box', coords: req.box, label: 1 });
  else return;
  const view = { prompts, choices: [...choices, null], recorded: true };
  req.shown = localState(prompts, view.choices).then(async () => {
    if (S.inflight !== req || req.answered || S.queue.length || req.key !== S.imageKey || !localActive()) return;
    if (prompts.length > MAX_PROMPTS_LOCAL) return; // the server refuses it
    req.before = { prompts: S.prompts, candidates: S.candidates, selected: S.selected, first: S.first,
                   firstSelected: S.firstSelected, current: LD.current, steps: LD.steps };
    await applyState(view);
    req.drawn = performance.now();
    req.drawnKey = LD.current && LD.current.key;
  }).catch(() => null);
}

// Put back what was shown before `req`'s early drawing (speculate), when the server did not take it.
function unshow(req) {
  const b = req.before;
  if (!b) return;
  req.before = req.drawn = null;
  Object.assign(S, { prompts: b.prompts, candidates: b.candidates, selected: b.selected, first: b.first,
                     firstSelected: b.firstSelected });
  LD.current = b.current;
  LD.steps = b.steps;
  LD.version++;
  renderCandidates();
  draw();
}

// ---- masks at the display size, as the server draws them ------------------------------------------------
// Index and weight tables of F.interpolate(mode='bilinear', align_corners=False) along one axis, in float32.
function linearTable(inSize, outSize) {
  const key = inSize + '>' + outSize;
  let t = LD.tables.get(key);
  if (t) return t;
  const f = Math.fround, scale = f(inSize / outSize);
  t = { i0: new Int32Array(outSize), i1: new Int32Array(outSize), w0: new Float32Array(outSize), w1: new Float32Array(outSize) };
  for (let d = 0; d < outSize; d++) {
    const src = Math.max(0, f(f(scale * f(d + 0.5)) - 0.5));
    const i = Math.min(Math.floor(src), inSize - 1), lambda = Math.min(Math.max(f(src - i), 0), 1);
    t.i0[d] = i;
    t.i1[d] = i + (i < inSize - 1 ? 1 : 0);
    t.w1[d] = lambda;
    t.w0[d] = f(1 - lambda);
  }
  LD.tables.set(key, t);
  return t;
}

// Rows of src (inW wide) resized along x to the first keepW of outW columns, into dst (rows x keepW).
function alongX(src, rows, inW, outW, keepW, dst) {
  const f = Math.fround, { i0, i1, w0, w1 } = linearTable(inW, outW);
  for (let r = 0; r < rows; r++) {
    const row = r * inW, o = r * keepW;
    for (let c = 0; c < keepW; c++) dst[o + c] = f(f(src[row + i0[c]] * w0[c]) + f(src[row + i1[c]] * w1[c]));
  }
  return dst;
}

// Rows of src (w wide) resized along y from inH to the first keepH of outH rows: into dst, or where `px` is
// given, `rgba` written to px where the value exceeds `t`.
function alongY(src, inH, outH, keepH, w, dst, px, t, rgba) {
  const f = Math.fround, ty = linearTable(inH, outH);
  for (let y = 0; y < keepH; y++) {
    const a = ty.i0[y] * w, b = ty.i1[y] * w, wa = ty.w0[y], wb = ty.w1[y], o = y * w;
    if (px) { for (let c = 0; c < w; c++) if (f(f(src[a + c] * wa) + f(src[b + c] * wb)) > t) px[o + c] = rgba; }
    else for (let c = 0; c < w; c++) dst[o + c] = f(f(src[a + c] * wa) + f(src[b + c] * wb));
  }
}

// A float32 buffer of at least n values, kept for the next mask.
function scratch(i, n) {
  if (!(LD.scratch[i] && LD.scratch[i].length >= n)) LD.scratch[i] = new Float32Array(n);
  return LD.scratch[i];
}

// Low-res logits -> a canvas of the display size, `color` where the upsampled logits exceed the threshold: the
// logits resized to the model input's square (rows then columns, as torch), cropped to the image, resized to
// the display size when it differs, thresholded; the last resize writes the pixels itself.
function maskLayer(logits, color, tag) {
  const cfg = LD.cfg, low = 4 * cfg.shape[1], big = cfg.img_size, [ih, iw] = cfg.input, [dh, dw] = cfg.display;
  const c = document.createElement('canvas');
  c.width = dw;
  c.height = dh;
  const g = c.getContext('2d', { willReadFrequently: true }), im = g.createImageData(dw, dh);
  const px = new Uint32Array(im.data.buffer), word = new Uint32Array(1), rgb = parseInt(color.slice(1), 16);
  new Uint8Array(word.buffer).set([rgb >> 16, (rgb >> 8) & 255, rgb & 255, 255]); // RGBA in memory order
  const rows = alongX(logits, low, low, big, iw, scratch(0, low * iw)), t = cfg.threshold;
  if (ih === dh && iw === dw) alongY(rows, low, big, ih, iw, null, px, t, word[0]);
  else {
    const input = scratch(1, ih * iw);
    alongY(rows, low, big, ih, iw, input);
    alongY(alongX(input, ih, iw, dw, dw, scratch(2, ih * dw)), ih, dh, dh, dw, null, px, t, word[0]);
  }
  g.putImageData(im, 0, 0);
  c.dataset.key = 'local|' + tag + '|' + (++LD.layerId);
  c.dataset.color = color;
  S.layers.set(c.dataset.key, c);
  return c;
}

// A step's masks as the panel's candidates (made once per decode): the selected one drawn now, the others
// just after.
function layers(step, color) {
  const list = step.res.drawn || (step.res.drawn = step.masks.map((logits, i) => ({ score: step.scores[i], layer: null, logits })));
  list.forEach((m, i) => {
    if (m.layer || (m.ready && i !== step.selected)) return;
    if (i === step.selected) m.layer = maskLayer(m.logits, color, 'cand');
    else m.ready = new Promise((resolve) => setTimeout(resolve, 0)).then(() => { if (!m.layer) m.layer = maskLayer(m.logits, color, 'cand'); });
  });
  return list;
}
