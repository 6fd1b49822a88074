// ---- input: images, pointer and touch, keys, toolbar (part of the canvas's script; see canvas.js) ---------

// ---- loading images ---------------------------------------------------------------------------------------
// A new file is shown at once, but it replaces the current image, prompts and objects only when the server
// has read it: when it cannot (a damaged file, too many pixels...) the page goes back to what it had.
async function loadFile(file) {
  const t0 = performance.now();
  if (!file || refuseDuringJob()) return;
  if (!file.type || !file.type.startsWith('image/')) return say('That is not an image file.', true);
  const url = URL.createObjectURL(file);
  const probe = new Image();
  // Its size is known once it has loaded; decode() would also decode every pixel first (most of a second
  // for a 12-megapixel photo, before the upload could start). The page's <img> decodes it at display size.
  const loaded = new Promise((resolve, reject) => { probe.onload = resolve; probe.onerror = reject; });
  probe.src = url;
  try {
    await loaded;
  } catch (e) {
    URL.revokeObjectURL(url);
    return say('The browser cannot show this image; try a PNG or JPEG.', true);
  }
  const rid = ++S.rid;
  if (!S.pending) S.pending = { prev: { src: img.getAttribute('src'), width: S.width, height: S.height } };
  Object.assign(S.pending, { rid, url, t0 });
  S.ready = false; // no prompts until the new image is in
  img.src = url;
  S.width = probe.naturalWidth;
  S.height = probe.naturalHeight;
  say('');
  startJob('image', 'Uploading…');
  try {
    const sending = upload(file);
    thumbBase(probe); // while the file travels
    const { path } = await sending;
    if (rid !== S.rid) return;
    jobText('Computing the image embedding…');
    trigger('image', { path, name: file.name || 'image', rid });
  } catch (e) {
    if (rid !== S.rid) return;
    endJob();
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
q('.sam-upload').addEventListener('click', () => { if (!refuseDuringJob()) fileInput.click(); });
fileInput.addEventListener('change', () => { loadFile(fileInput.files[0]); fileInput.value = ''; });
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
// The examples (a Gradio gallery placed inside the canvas): a choice starts loading, or waits for a running job.
root.addEventListener('click', (e) => {
  const thumb = e.target.closest && e.target.closest('#sam-examples button, #sam-examples .thumbnail-item');
  if (!thumb) return;
  if (refuseDuringJob()) { e.preventDefault(); e.stopPropagation(); return; }
  startJob('image', 'Opening the example…');
  showStage();
}, true);

// ---- pointer: click or tap = point, drag = box, rest = hover preview --------------------------------------
function toImage(e) {
  const r = overlay.getBoundingClientRect();
  const x = ((e.clientX - r.left) * S.width) / r.width;
  const y = ((e.clientY - r.top) * S.height) / r.height;
  const r2 = (v) => Math.round(v * 100) / 100; // the server echoes 2 decimals: send exactly those
  return [r2(Math.min(Math.max(x, 0), S.width)), r2(Math.min(Math.max(y, 0), S.height))];
}

root.addEventListener('pointerenter', () => { S.pointerIn = true; });
root.addEventListener('pointerleave', () => { S.pointerIn = false; });
overlay.addEventListener('contextmenu', (e) => e.preventDefault());
overlay.addEventListener('pointerdown', (e) => {
  if (e.button !== 0 && e.button !== 2) return;
  if (refuseDuringJob() || !S.ready) return e.preventDefault();
  stage.classList.add('sam-pointer'); // focused by the pointer: no focus ring
  stage.focus({ preventScroll: true });
  clearTimeout(S.hoverTimer);
  const [x, y] = toImage(e);
  // A finger scrolls the page unless Box is chosen: then a tap is a point and only Box drags.
  const touch = e.pointerType === 'touch' || e.pointerType === 'pen';
  if (!touch || S.mode === 'box') { e.preventDefault(); overlay.setPointerCapture(e.pointerId); }
  S.drag = { x, y, cx: e.clientX, cy: e.clientY, button: e.button, moved: false, box: null, touch };
});
q('.sam-busy').addEventListener('pointerdown', (e) => { if (!e.target.closest('.sam-cancel')) refuseDuringJob(); });
overlay.addEventListener('pointercancel', () => { S.drag = null; draw(); });
overlay.addEventListener('pointermove', (e) => {
  if (!S.ready || S.job) return;
  const [x, y] = toImage(e);
  const d = S.drag;
  if (d) {
    const far = Math.hypot(e.clientX - d.cx, e.clientY - d.cy) > DRAG_PX;
    if (!d.moved && far && d.button === 0 && (!d.touch || S.mode === 'box')) d.moved = true;
    if (!d.moved && far && d.touch) { S.drag = null; return; } // the finger is scrolling
    if (d.moved) {
      d.box = [Math.min(d.x, x), Math.min(d.y, y), Math.max(d.x, x), Math.max(d.y, y)];
      S.hover = null;
      draw();
    }
    return;
  }
  if (S.everything && S.everythingOn) {
    const under = labelAt(x, y);
    if (under !== S.under) { S.under = under; draw(); }
    return;
  }
  if (!S.hoverOn || e.pointerType === 'touch') return;
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
  } else if (S.mode === 'box' && d.button === 0) {
    say('Box: drag on the image to draw one (or choose Positive or Negative to add points).');
  } else if (S.everything && S.everythingOn) {
    pickAt(d.x, d.y, t0); // with everything shown, a click picks the mask under it
  } else {
    const negative = d.button === 2 || S.mode === 'negative';
    enqueue({ type: 'point', x: d.x, y: d.y, label: negative ? 0 : 1, t0 });
  }
  S.hover = null;
  S.hoverId++;
  draw();
});
overlay.addEventListener('pointerleave', () => {
  clearTimeout(S.hoverTimer);
  S.hoverId++;
  if (S.under >= 0) S.under = -1;
  if (S.hover) S.hover = null;
  draw();
});

// ---- keys: whenever the pointer is over the tool or the focus is in it -----------------------------------
// Ctrl+Z undo, Esc clear prompts, Enter add object, 1 2 3 a candidate, n positive / negative; on the image,
// the arrow keys move a cursor (Shift: by ten steps) and Space adds a point there.
function typing(t) {
  if (!t || !t.tagName) return false;
  if (t.tagName === 'INPUT') return !['checkbox', 'range', 'button', 'radio'].includes(t.type);
  return t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable;
}

function onKey(e) {
  if (!document.body.contains(root)) return;
  stage.classList.remove('sam-pointer');
  const t = e.target;
  if (!(S.pointerIn || root.contains(document.activeElement)) || typing(t)) return;
  const key = e.key;
  if ((e.ctrlKey || e.metaKey) && !e.shiftKey && (key === 'z' || key === 'Z')) {
    e.preventDefault();
    return enqueue({ type: 'undo' });
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const onButton = t && t.closest && t.closest('button, a, summary');
  if (key === 'Escape') {
    if (S.drag) { S.drag = null; draw(); } else if (S.prompts.length) enqueue({ type: 'clear' });
  } else if (key === 'Enter' && !onButton) {
    e.preventDefault();
    addObject();
  } else if (key === '1' || key === '2' || key === '3') {
    chooseCandidate(Number(key) - 1);
  } else if (key === 'n' || key === 'N') {
    setMode(S.mode === 'negative' ? 'positive' : 'negative');
  } else if (t === stage && S.ready) {
    keyboardCursor(e);
  }
}
document.addEventListener('keydown', onKey);

function keyboardCursor(e) {
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  if (!S.cursor) S.cursor = { x: Math.round(S.width / 2), y: Math.round(S.height / 2) };
  if (moves[e.key]) {
    e.preventDefault();
    const step = Math.max(1, Math.round(Math.max(S.width, S.height) / 100)) * (e.shiftKey ? 10 : 1);
    const [dx, dy] = moves[e.key];
    S.cursor = {
      x: Math.min(S.width - 1, Math.max(0, S.cursor.x + dx * step)),
      y: Math.min(S.height - 1, Math.max(0, S.cursor.y + dy * step)),
    };
    draw();
    if (S.hoverOn && !(S.everything && S.everythingOn)) {
      const { x, y } = S.cursor, t0 = performance.now();
      clearTimeout(S.hoverTimer);
      S.hoverTimer = setTimeout(() => requestHover(x, y, t0), HOVER_MS * 5);
    }
  } else if (e.key === ' ') {
    e.preventDefault();
    const { x, y } = S.cursor;
    if (S.everything && S.everythingOn) return pickAt(x, y, performance.now());
    enqueue({ type: 'point', x, y, label: S.mode === 'negative' ? 0 : 1, kbd: true });
  }
}
stage.addEventListener('focus', () => draw());
stage.addEventListener('blur', () => draw());

// ---- toolbar and panel ---------------------------------------------------------------------------------------
function setMode(mode) {
  S.mode = mode;
  for (const b of root.querySelectorAll('.sam-mode')) b.setAttribute('aria-pressed', b.dataset.mode === mode ? 'true' : 'false');
  root.classList.toggle('sam-boxmode', mode === 'box');
}
for (const b of root.querySelectorAll('.sam-mode')) b.addEventListener('click', () => setMode(b.dataset.mode));

function addObject() { enqueue({ type: 'add', name: q('.sam-name').value }); }

q('.sam-hover-toggle').addEventListener('change', (e) => {
  S.hoverOn = e.target.checked;
  if (!S.hoverOn) { S.hover = null; S.hoverId++; draw(); }
});
q('.sam-undo').addEventListener('click', () => enqueue({ type: 'undo' }));
q('.sam-clear').addEventListener('click', () => enqueue({ type: 'clear' }));
q('.sam-clear-all').addEventListener('click', () => enqueue({ type: 'clear_all' }));
q('.sam-add').addEventListener('click', addObject);
q('.sam-name').addEventListener('keydown', (e) => { if (e.key === 'Enter') addObject(); });
q('.sam-everything').addEventListener('click', () => {
  if (refuseDuringJob()) return;
  if (!S.ready) return say('Upload an image or pick an example first.', true);
  if (S.everything) {
    S.everythingOn = !S.everythingOn;
    S.under = -1;
    everythingButton();
    return draw();
  }
  startJob('everything', 'Segmenting everything…');
  trigger('everything', { token: S.token, run: S.job.run });
});
q('.sam-cancel').addEventListener('click', async () => {
  const j = S.job;
  if (!j || j.kind !== 'everything') return;
  jobText('Cancelling…');
  try { await server.sam_act({ type: 'cancel', token: S.token, run: j.run }); } catch (e) { /* the run ends anyway */ }
});
new ResizeObserver(() => draw()).observe(img);
setMode('positive');
setTimeout(liveStatus, 1000); // updateDom sets it now, and again at each update
updateDom();

// For tests and benchmarks: read what is drawn without reaching into the closure.
root.samDebug = {
  state: () => ({
    ready: S.ready, width: S.width, height: S.height, prompts: S.prompts, selected: S.selected, model: S.model,
    scores: S.candidates.map((c) => c.score), first: S.first.map((c) => c.score), firstSelected: S.firstSelected,
    objects: S.objects.map((o) => ({ id: o.id, name: o.name, color: o.color, ...objectStyle(o) })),
    everything: S.everything ? { count: S.everything.count, shown: S.everythingOn, under: S.under } : null,
    hover: S.hover ? { x: S.hover.x, y: S.hover.y, score: S.hover.score } : null, message: S.message, error: S.error,
    busy: !!S.inflight || S.queue.length > 0, job: S.job ? S.job.kind : null, mode: S.mode, cursor: S.cursor,
    decode: root.dataset.decode || 'server', images: S.images, decodeThreads: LD.threads, decodeRuns: LD.runs,
  }),
  timings: () => S.timings.slice(),
  labelAt: (x, y) => labelAt(x, y),
  // The drawn overlay's RGBA at image pixel (x, y).
  pixelAt: (x, y) => {
    const px = Math.floor((x * overlay.width) / S.width), py = Math.floor((y * overlay.height) / S.height);
    return [...ctx.getImageData(px, py, 1, 1).data];
  },
  // Whether a mask layer ('candidate', 'hover' or an object index) covers image pixel (x, y).
  maskAt: (which, x, y) => {
    const c = debugLayer(which);
    const px = Math.floor((x * c.width) / S.width), py = Math.floor((y * c.height) / S.height);
    return c.getContext('2d').getImageData(px, py, 1, 1).data[3] > 0;
  },
  // A mask layer's pixels, row by row: '1' where it covers, '0' elsewhere.
  maskBits: (which) => {
    const c = debugLayer(which);
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let bits = '';
    for (let i = 3; i < data.length; i += 4) bits += data[i] ? '1' : '0';
    return bits;
  },
  // A mask layer as {width, height, count, box: [x0, y0, x1, y1]}.
  maskInfo: (which) => {
    const c = debugLayer(which);
    if (!c) return null;
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
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

function debugLayer(which) {
  const m = which === 'candidate' ? S.candidates[S.selected] : which === 'hover' ? S.hover : S.objects[which];
  return m && m.layer;
}
