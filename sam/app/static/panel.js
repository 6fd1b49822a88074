// ---- the side panel: candidate masks and objects (part of the canvas's script; see canvas.js) --------------

// Predicted IoU (the model's own estimate of how well a mask fits) in words.
function quality(score) {
  return score >= 0.9 ? 'very good' : score >= 0.8 ? 'good' : score >= 0.6 ? 'fair' : 'poor';
}

// The image at the thumbnails' size (64 px tall), made once per image: drawing the photo itself into a canvas
// decodes all of its pixels again (13 ms for 1600x1200, over 100 ms for 12 megapixels), which the first click
// would pay. `from`: a loaded <img> of the same file (loadFile draws from its probe while the file uploads).
function thumbBase(from = img) {
  const w = Math.max(1, Math.round(S.width * (64 / Math.max(1, S.height))));
  if (S.thumb && S.thumb.src === from.src && S.thumb.canvas.width === w) return S.thumb.canvas;
  const c = document.createElement('canvas');
  c.width = w;
  c.height = 64;
  c.getContext('2d').drawImage(from, 0, 0, w, 64);
  S.thumb = { src: from.src, canvas: c };
  return c;
}

// A small picture of the image with one mask over it.
function thumbnail(mask) {
  const base = thumbBase(), c = document.createElement('canvas');
  c.width = base.width;
  c.height = base.height;
  c.setAttribute('aria-hidden', 'true');
  const paint = () => {
    const g = c.getContext('2d');
    g.drawImage(base, 0, 0);
    g.globalAlpha = 0.6;
    g.drawImage(mask.layer, 0, 0, c.width, c.height);
  };
  if (mask.layer) paint(); else if (mask.ready) mask.ready.then(paint);
  return c;
}

// The first click gives three masks; later prompts refine the chosen one, and the three stay offered: picking
// another one then redoes the later prompts on it.
function renderCandidates() {
  const box = q('.sam-candidates');
  box.replaceChildren();
  const refining = S.prompts.length > 1;
  const list = refining ? S.first : S.candidates;
  const selected = refining ? S.firstSelected : S.selected;
  const note = q('.sam-mask-note');
  if (!S.candidates.length) note.textContent = 'Click the image to get a mask.';
  else if (list.length < 2) note.textContent = 'Mask from ' + S.model + '.';
  else if (refining) note.textContent = 'Mask from ' + S.model + ', refined by ' + S.prompts.length + ' prompts. The first click\'s masks:';
  else note.textContent = 'Masks from ' + S.model + '; the best is chosen:';
  if (list.length < 2) return;
  list.forEach((c, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'sam-cand';
    b.setAttribute('aria-pressed', i === selected ? 'true' : 'false');
    b.setAttribute('aria-keyshortcuts', String(i + 1));
    b.title = 'The model rates this mask ' + Math.round(Math.max(0, c.score) * 100) + ' of 100';
    const label = document.createElement('span');
    label.textContent = (i === selected ? '✓ ' : '') + (i + 1) + ' · ' + quality(c.score);
    b.append(thumbnail(c), label);
    b.addEventListener('click', () => chooseCandidate(i));
    box.appendChild(b);
  });
}

async function chooseCandidate(i) {
  if (refuseDuringJob()) return;
  if (S.prompts.length > 1) {
    if (i < S.first.length && i !== S.firstSelected) enqueue({ type: 'choose_first', index: i });
    return;
  }
  const c = S.candidates[i];
  if (!c || S.candidates.length < 2) return;
  S.selected = i;
  S.firstSelected = i;
  renderCandidates();
  if (!c.layer) await c.ready;
  draw();
  enqueue({ type: 'choose', index: i });
}

function objectStyle(o) {
  let style = S.styles.get(o.id);
  if (!style) { style = { hidden: false, opacity: OPACITY }; S.styles.set(o.id, style); }
  return style;
}

function renderObjects() {
  const list = q('.sam-objects');
  list.replaceChildren();
  q('.sam-count').textContent = S.objects.length ? '(' + S.objects.length + ')' : '';
  q('.sam-clear-all').hidden = !S.objects.length;
  q('.sam-objects-none').hidden = !!S.objects.length;
  S.objects.forEach((o, i) => list.appendChild(objectRow(o, i)));
}

function objectRow(o, i) {
  const style = objectStyle(o);
  const li = document.createElement('li');
  li.dataset.id = String(o.id);
  li.title = 'Quality: ' + quality(o.score) + ' · ' + o.area + ' pixels';
  const sw = document.createElement('span');
  sw.className = 'sam-swatch';
  sw.style.background = o.color;
  const name = document.createElement('input');
  name.type = 'text';
  name.className = 'sam-obj-name';
  name.value = o.name;
  name.maxLength = 40;
  name.setAttribute('aria-label', 'Name of object ' + (i + 1));
  name.addEventListener('change', () => enqueue({ type: 'rename', index: i, name: name.value }));
  name.addEventListener('keydown', (e) => { if (e.key === 'Enter') name.blur(); });
  const show = document.createElement('button');
  show.type = 'button';
  show.className = 'sam-show';
  const showText = () => {
    show.textContent = style.hidden ? 'Show' : 'Hide';
    show.setAttribute('aria-label', (style.hidden ? 'Show ' : 'Hide ') + o.name);
  };
  showText();
  show.addEventListener('click', () => { style.hidden = !style.hidden; showText(); draw(); });
  const del = document.createElement('button');
  del.type = 'button';
  del.className = 'sam-del';
  del.setAttribute('aria-label', 'Delete ' + o.name);
  del.textContent = '×';
  del.addEventListener('click', () => enqueue({ type: 'delete', index: i }));
  const opacity = document.createElement('input');
  opacity.type = 'range';
  opacity.className = 'sam-opacity';
  opacity.min = '0';
  opacity.max = '100';
  opacity.value = String(style.opacity);
  opacity.setAttribute('aria-label', 'Opacity of ' + o.name);
  opacity.addEventListener('input', () => { style.opacity = Number(opacity.value); draw(); });
  li.append(sw, name, show, del, opacity);
  return li;
}

// ---- segment everything: one label image, the mask under the cursor, picked masks ------------------------
async function setEverything(e) {
  S.everything = null;
  S.under = -1;
  if (e.png) {
    const im = new Image();
    im.src = e.png;
    await im.decode();
    const c = document.createElement('canvas');
    c.width = im.naturalWidth;
    c.height = im.naturalHeight;
    const g = c.getContext('2d', { willReadFrequently: true });
    g.drawImage(im, 0, 0);
    const index = new Map(e.colors.map((hex, i) => [parseInt(hex.slice(1), 16), i]));
    const data = g.getImageData(0, 0, c.width, c.height).data;
    const labels = new Int16Array(c.width * c.height).fill(-1);
    for (let p = 0, i = 0; p < labels.length; p++, i += 4) {
      if (data[i + 3]) labels[p] = index.get((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]) ?? -1;
    }
    S.everything = { layer: c, labels, count: e.colors.length, picked: new Map(), highlight: null };
  }
  S.everythingOn = !!S.everything;
  everythingButton();
}

// The everything mask under image pixel (x, y): its index, or -1.
function labelAt(x, y) {
  const e = S.everything;
  if (!e) return -1;
  const px = Math.min(e.layer.width - 1, Math.max(0, Math.floor((x * e.layer.width) / S.width)));
  const py = Math.min(e.layer.height - 1, Math.max(0, Math.floor((y * e.layer.height) / S.height)));
  return e.labels[py * e.layer.width + px];
}

// Mask i of the label image alone, white (cached for the mask last asked for).
function highlight(i) {
  const e = S.everything;
  if (e.highlight && e.highlight.i === i) return e.highlight.canvas;
  const c = document.createElement('canvas');
  c.width = e.layer.width;
  c.height = e.layer.height;
  const g = c.getContext('2d');
  const out = g.createImageData(c.width, c.height);
  for (let p = 0; p < e.labels.length; p++) {
    if (e.labels[p] === i) out.data.set([255, 255, 255, 255], p * 4);
  }
  g.putImageData(out, 0, 0);
  e.highlight = { i, canvas: c };
  return c;
}

// A picked mask leaves the everything layer: it is drawn as an object from now on.
function everythingPicked(i) {
  const e = S.everything;
  const obj = S.objects[S.objects.length - 1];
  if (!e || !obj || e.picked.has(i)) return;
  e.picked.set(i, obj.id);
  const g = e.layer.getContext('2d');
  const data = g.getImageData(0, 0, e.layer.width, e.layer.height);
  for (let p = 0; p < e.labels.length; p++) if (e.labels[p] === i) data.data[p * 4 + 3] = 0;
  g.putImageData(data, 0, 0);
  draw();
}

// A click with everything shown: the mask under it becomes an object, or the page says why not.
function pickAt(x, y, t0) {
  const e = S.everything;
  const i = labelAt(x, y);
  if (i < 0) return say('No mask there: click a coloured region, or press Hide everything to add points.');
  const id = e.picked.get(i);
  const obj = S.objects.find((o) => o.id === id);
  if (obj) return say('That mask is already ' + obj.name + '.');
  enqueue({ type: 'pick', index: i, t0 });
}

function everythingButton() {
  q('.sam-everything').textContent = S.everything && S.everythingOn ? 'Hide everything' : 'Everything';
}
