// ---- talking to the server (part of the canvas's script; see canvas.js) ----------------------------------
function enqueue(action) {
  if (refuseDuringJob()) return;
  if (!S.ready) return say('Upload an image or pick an example first.', true);
  action.seq = ++S.seq;
  action.t0 = action.t0 || performance.now();
  action.key = S.imageKey;
  S.queue.push(action);
  pump();
}

function requestHover(x, y, t0) {
  if (S.job || !S.ready) return;
  if (localActive()) return hoverLocally(x, y, t0);
  S.pendingHover = { type: 'hover', x, y, hid: ++S.hoverId, t0, key: S.imageKey };
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
  const { t0, hid, kbd, ...body } = req;
  body.token = S.token;
  body.objects_version = S.objectsVersion;
  body.first_version = S.firstVersion;
  const local = localActive() && LOCAL_TYPES.includes(req.type);
  if (local) body.local = true; // the server records it; the masks are computed here
  let res;
  try {
    const answer = server.sam_act(body);
    // A decode holds the page's thread, so it starts once the request is on its way (the call above sent it),
    // and before the browser's next frame (a timer would wait for it).
    if (local) queueMicrotask(() => speculate(req));
    res = await Promise.race([answer, timeout(TIMEOUT_MS)]);
    if (!res || typeof res !== 'object' || !('seq' in res)) throw new Error('an empty reply'); // answers carry seq
  } catch (e) {
    res = { error: 'The server did not answer: ' + (e && e.message ? e.message : e) };
  }
  req.answered = performance.now();
  if (req.shown) await req.shown; // what the page drew before the answer came (decoder.js speculate)
  try {
    await apply(req, res);
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
  if (req.key !== S.imageKey) return; // made on an image the page no longer shows
  if (res.stale || res.error) unshow(req); // the server did not take what the page drew early
  if (res.stale) return;
  if (res.error) {
    if (res.expired) { S.ready = false; S.token = null; }
    if (req.type !== 'hover') say(res.error, true);
    return;
  }
  if (req.type === 'hover') {
    if (req.hid !== S.hoverId || S.queue.length || !S.hoverOn || S.drag || S.job) return; // the cursor moved on
    const hover = (await masks([res.hover], HOVER))[0];
    if (req.hid !== S.hoverId) return;
    S.hover = { ...hover, x: req.x, y: req.y };
    draw();
    record('hover', req, res);
    return;
  }
  await applyState(res);
  record(req.type, req, res);
  if (req.type === 'add') q('.sam-name').value = '';
  if (req.type === 'pick') everythingPicked(req.index);
  if (req.kbd && !res.message) say('Added a ' + (req.label ? 'positive' : 'negative') + ' point at ' + req.x + ', ' + req.y + '.');
}

async function applyState(v) {
  let local = null;
  if (v.recorded && localActive()) {
    try { local = await localView(v); } catch (e) { localFailed(e); }
  } else if ('prompts' in v && !v.prompts.length) { LD.current = null; LD.steps = []; }
  const [cands, first, objs] = await Promise.all([
    local ? local.cands : 'candidates' in v ? candidateMasks(v.candidates, 'selected' in v ? v.selected : S.selected) : null,
    local ? local.first : 'first' in v ? masks(v.first, CANDIDATE) : null,
    'objects' in v ? masks(v.objects) : null,
  ]);
  if (v.everything) await setEverything(v.everything);
  if (cands) S.candidates = cands;
  if (local) Object.assign(v, { selected: local.selected, first_selected: local.firstSelected, model: LD.cfg.model });
  if ('selected' in v) S.selected = v.selected;
  if ('prompts' in v) S.prompts = v.prompts;
  if ('model' in v) S.model = v.model;
  if ('first_version' in v) S.firstVersion = v.first_version;
  if (first) S.first = first;
  else if ('prompts' in v && v.prompts.length <= 1) S.first = S.candidates.length === 3 ? S.candidates : [];
  if ('first_selected' in v) S.firstSelected = v.first_selected;
  else if ('prompts' in v && v.prompts.length <= 1) S.firstSelected = S.selected;
  if (objs) { S.objects = objs; S.objectsVersion = v.objects_version; renderObjects(); }
  if ('candidates' in v || 'prompts' in v) S.hover = null;
  renderCandidates();
  pruneLayers();
  say(v.message || '');
  draw();
}

// ms: from the user's action to the answer drawn (or to the page's own drawing before it, when the answer
// confirmed it); answer_ms: to the answer received; server_ms: the server's work.
function record(type, req, res) {
  if (!req.t0) return;
  const confirmed = req.drawn && LD.current && LD.current.key === req.drawnKey; // the answer showed no change
  const decode = res.decode || (res.recorded ? 'browser' : 'server');
  const decodeMs = res.recorded ? takeDecodeMs() : res.decode_ms; // time in ONNX Runtime (decoder.js)
  S.timings.push({ type, ms: (confirmed ? req.drawn : performance.now()) - req.t0, answer_ms: req.answered - req.t0,
                   server_ms: res.ms, decode, decode_ms: decodeMs });
  if (S.timings.length > 1000) S.timings.shift();
}

// A new view from a queued event (image upload, example, model change, segment everything): props.value is
// set by Python, with `job` naming the event and `n` making each answer differ from the one before.
watch('value', async () => {
  const v = props.value;
  if (!v || typeof v !== 'object') return;
  if (v.rid && v.rid !== S.rid) return; // an answer to an upload that was replaced since
  if (!v.rid && v.image && v.image.src) S.rid++; // an example replaces any upload still on its way
  if (S.job && v.job === S.job.kind) endJob();
  if (v.error) {
    if (S.pending && v.rid === S.pending.rid) restorePrevious();
    if (!v.in_status) say(v.error, true); // a model that cannot be loaded is explained in the status line
    return;
  }
  if (v.cancelled) return say(v.message);
  if (!v.token || !v.image) return;
  const uploaded = S.pending && v.rid === S.pending.rid ? S.pending.t0 : null;
  S.pending = null;
  const fresh = v.token !== S.token || v.image.key !== S.imageKey;
  S.token = v.token;
  S.imageKey = v.image.key;
  S.width = v.image.width;
  S.height = v.image.height;
  if (v.image.name) S.imageName = v.image.name;
  if (v.image.src) {
    img.src = v.image.src;
    try { await img.decode(); } catch (e) { return say('The browser could not show this image.', true); }
  }
  if (fresh) {
    S.queue = []; S.pendingHover = null; S.hover = null; S.cursor = null; S.first = []; S.firstVersion = -1;
    S.everything = null; S.everythingOn = false; S.styles.clear(); everythingButton();
  }
  S.ready = true;
  S.images++; // views of an image applied (tests wait for the next one)
  if ('local' in v) prepareLocal(v.local); // in the background; the server decodes until it is ready
  await applyState(v);
  if (uploaded !== null) S.timings.push({ type: 'image', ms: performance.now() - uploaded }); // file chosen -> ready
  if (fresh) showStage();
});

// The image's top in view (after a thumbnail far below it was chosen, on a phone).
function showStage() {
  const r = stage.getBoundingClientRect();
  if (r.top < 0 || r.top > window.innerHeight * 0.6) stage.scrollIntoView({ block: 'start' });
}

// The status line (a Gradio component beside the model picker) is announced when it changes.
function liveStatus() {
  const status = document.getElementById('sam-status');
  if (status && !status.hasAttribute('role')) { status.setAttribute('role', 'status'); status.setAttribute('aria-live', 'polite'); }
}
