// <smart-frame>: the imgproxy viewer (SPEC §7). One file, no dependencies, no build step.
//   <script type="module" src="https://proxy.example/smart-frame.js"></script>
//   <smart-frame image-id="IMG_0042" alt="A harbour at dusk"></smart-frame>
// Attributes: image-id, src-base (the proxy; default: where this file came from), alt. Sized by
// CSS like an <img>: a block as wide as its container, with the image's aspect ratio once known.
// For pages and tests: attributes stage (loading|placeholder|display|error) and zoom
// (preparing|ready), a bubbling "stagechange" event, `view`, zoomIn(), zoomOut(), resetZoom().

const MAX_STREAMS = 3; // event streams per proxy: HTTP/1.1 allows ~6 connections per host
const MAX_TILE_LOADS = 6; // tile requests in flight per frame
const MAX_TILES_KEPT = 600; // decoded tiles kept per frame
const streams = new Map(); // proxy base → open EventSource count

const CSS = `
:host{display:block;position:relative;aspect-ratio:3/2;overflow:hidden;background:#e9e9ec;contain:content}
.frame,.view{position:absolute;inset:0}
.frame{container-type:size}
.view{outline:0}
.view:focus-visible{box-shadow:inset 0 0 0 3px #2563eb}
.zoomable{cursor:zoom-in;touch-action:pan-x pan-y}
.zoomed{cursor:grab;touch-action:none}
.zoomed:active{cursor:grabbing}
img,canvas{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;pointer-events:none}
.ph{filter:blur(clamp(6px,3cqw,28px));transform:scale(1.1)}
.disp{transition:opacity .25s}
.entering{opacity:0}
canvas,.zoomed img{visibility:hidden}
.zoomed canvas{visibility:visible}
.loader{position:absolute;inset:0;display:grid;place-items:center}
.loader span{width:28px;height:28px;border-radius:50%;border:3px solid #0002;border-top-color:#555;animation:spin .9s linear infinite}
@keyframes spin{to{transform:rotate(1turn)}}
@media (prefers-reduced-motion:reduce){.loader span{animation-duration:3s}.disp{transition:none}}
.msg{position:absolute;inset:0;margin:0;padding:1rem;display:flex;flex-direction:column;gap:.25rem;align-items:center;
  justify-content:center;text-align:center;background:#f4f1f1;color:#7a1c1c;font:14px/1.4 system-ui,sans-serif}
.ctl{position:absolute;right:8px;bottom:8px;display:flex;align-items:center;gap:4px;font:12px/1 system-ui,sans-serif}
.ctl button{width:32px;height:32px;padding:0;border:0;border-radius:6px;cursor:pointer;background:#111c;color:#fff;
  font:20px/32px system-ui,sans-serif}
.ctl button:hover:not(:disabled){background:#000e}
.ctl button:focus-visible{outline:2px solid #fff;box-shadow:0 0 0 4px #2563eb}
.ctl button:disabled{cursor:default;background:#1117;color:#fff8}
.hint{padding:6px 8px;border-radius:6px;background:#111c;color:#fff}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
[hidden]{display:none!important}`;

const TEMPLATE = `<style>${CSS}</style><style class="ratio"></style>
<div class="frame">
  <div class="view" role="img"><img class="ph" alt="" hidden><canvas></canvas></div>
  <div class="loader" role="status"><span></span><b class="sr">Loading image…</b></div>
  <p class="msg" role="alert" hidden></p>
  <div class="ctl" role="group" aria-label="Zoom" hidden>
    <span class="hint" id="hint">Preparing zoom…</span>
    <button class="out" aria-label="Zoom out" title="Zoom out (−)" disabled>−</button>
    <button class="reset" aria-label="Reset zoom" title="Reset zoom (0)" disabled>⟲</button>
    <button class="in" aria-label="Zoom in" title="Zoom in (+)" disabled>+</button>
  </div>
</div>`;

const MESSAGES = {
  originalNotFound: "The image was not found.",
  invalidImage: "The file is not an image that can be shown.",
  uploadError: "The image could not be fetched from its source. Please try again later.",
};

const finished = (info) => info.status === "ready" || info.status === "error";

class SmartFrame extends HTMLElement {
  static observedAttributes = ["image-id", "src-base", "alt"];

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open", delegatesFocus: true });
    root.innerHTML = TEMPLATE;
    const $ = (sel) => root.querySelector(sel);
    this._els = {
      ratio: $(".ratio"), view: $(".view"), ph: $(".ph"), canvas: $("canvas"), loader: $(".loader"),
      msg: $(".msg"), ctl: $(".ctl"), hint: $(".hint"), zin: $(".in"), zout: $(".out"), reset: $(".reset"),
    };
    this._run = 0; // bumped on every (re)start: async work of an older run is dropped
    this._bind();
  }

  // ---- lifecycle and public state

  connectedCallback() {
    this._connected = true;
    this._resizer = new ResizeObserver(() => this._resized());
    this._resizer.observe(this);
    this._start();
  }

  disconnectedCallback() {
    this._connected = false;
    this._stop();
    this._resizer.disconnect();
  }

  attributeChangedCallback(name, old, value) {
    if (name === "alt") this._label();
    else if (old !== value && this._connected) this._start();
  }

  get base() {
    return (this.getAttribute("src-base") || new URL("./", import.meta.url).href).replace(/\/+$/, "");
  }

  get imageId() { return this.getAttribute("image-id") || ""; }

  /** The stage shown: loading, placeholder, display or error. */
  get stage() { return this.getAttribute("stage") || "loading"; }

  /** The last info.json object received. */
  get info() { return this._info; }

  _stop() {
    this._run++;
    this._closeStream();
    clearTimeout(this._pollTimer);
    cancelAnimationFrame(this._anim);
    this._animating = false;
  }

  _start() {
    this._stop();
    Object.assign(this, {
      _info: null, _dz: null, _dzLoading: false, _tiles: new Map(), _loading: 0, _queue: [],
      _z: 1, _cx: 0, _cy: 0, _level: null, _pollDelay: 0, _dispWidth: 0, _dispLoading: null, _phUrl: null,
    });
    this._disp?.remove();
    this._disp = null;
    const { ph, msg, ctl, loader, view, ratio } = this._els;
    ph.hidden = msg.hidden = ctl.hidden = true;
    ph.removeAttribute("src");
    loader.hidden = false;
    ratio.textContent = "";
    view.className = "view";
    view.removeAttribute("tabindex");
    this.removeAttribute("zoom");
    this._set("stage", "loading");
    this._label();
    this._updateControls();
    if (!this.imageId) return this._fail("No image-id given.");
    this._fetchInfo(this._run, true);
  }

  /** Reflect the stage (or the zoom state) as an attribute and announce it. */
  _set(name, value) {
    if (this.getAttribute(name) === value) return;
    this.setAttribute(name, value);
    this.toggleAttribute("aria-busy", this.stage === "loading");
    const detail = { stage: this.stage, zoom: this.getAttribute("zoom") };
    this.dispatchEvent(new CustomEvent("stagechange", { bubbles: true, composed: true, detail }));
  }

  _label() {
    this._els.view.setAttribute("aria-label", this.getAttribute("alt") || `Image ${this.imageId}`);
  }

  // ---- stages from the server

  _url(path) {
    return `${this.base}/images/${encodeURIComponent(this.imageId)}/${path}`;
  }

  /** GET info.json; then follow the event stream, or poll when no stream is available. */
  async _fetchInfo(run, first = false) {
    let info;
    try {
      const res = await fetch(this._url("info.json"), { cache: "no-store" });
      info = await res.json().catch(() => ({}));
      if (run !== this._run) return;
      if (res.status === 404) return this._fail(`Image “${this.imageId}” was not found.`);
      if (res.status === 400) return this._fail(info.error);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
    } catch {
      if (run !== this._run) return;
      if (this._pollDelay >= 4000 && this.stage === "loading") {
        return this._fail("The image service could not be reached."); // after ~15 s of failures
      }
      return this._poll(run);
    }
    this._apply(info);
    if (!finished(info) && !(first && this._openStream(run))) this._poll(run);
  }

  _poll(run) {
    this._pollDelay = Math.min((this._pollDelay || 500) * 1.5, 4000);
    this._pollTimer = setTimeout(() => this._fetchInfo(run), this._pollDelay);
  }

  _openStream(run) {
    const base = this.base;
    if (typeof EventSource !== "function" || (streams.get(base) || 0) >= MAX_STREAMS) return false;
    const source = new EventSource(this._url("events"));
    streams.set(base, (streams.get(base) || 0) + 1);
    this._stream = { source, base };
    source.onmessage = (event) => {
      let info;
      try {
        info = JSON.parse(event.data);
      } catch {
        return;
      }
      if (run !== this._run) return;
      if (finished(info)) this._closeStream();
      this._apply(info);
    };
    source.onerror = () => {
      // Broken or refused: poll rather than let EventSource reconnect forever.
      this._closeStream();
      if (run === this._run) this._poll(run);
    };
    return true;
  }

  _closeStream() {
    if (!this._stream) return;
    const { source, base } = this._stream;
    source.close();
    streams.set(base, streams.get(base) - 1);
    this._stream = null;
  }

  _apply(info) {
    if (info.status === "error") return this._fail(MESSAGES[info.error], info.error);
    const prev = this._info;
    this._info = info;
    if (info.width && info.height) {
      this._els.ratio.textContent = `:host{aspect-ratio:${info.width}/${info.height}}`;
    }
    if (prev && prev.version !== info.version) {
      Object.assign(this, { _dispWidth: 0, _dz: null, _tiles: new Map(), _z: 1 }); // a new version
    }
    if (info.stages.display) this._showRendition();
    else if (info.stages.placeholder) this._showPlaceholder(info.placeholder);
    if (info.stages.zoom && !this._dz && !this._dzLoading) this._prepareZoom(info);
    if (!this._dz) this._set("zoom", "preparing");
    this._els.ctl.hidden = false;
    this._updateControls();
  }

  async _showPlaceholder(url) {
    if (this._phUrl === url) return;
    this._phUrl = url;
    const run = this._run;
    const { ph, loader } = this._els;
    try {
      ph.src = url;
      await ph.decode();
    } catch {
      return; // keep the loader: the display stage or a poll follows
    }
    if (run !== this._run || this.stage !== "loading") return;
    ph.hidden = false;
    loader.hidden = true;
    this._set("stage", "placeholder");
  }

  _chooseRendition() {
    const { widths = [], formats = [], url } = this._info.renditions || {};
    if (!widths.length || !url) return null;
    // The rendered width of the image: the frame's, unless the frame letterboxes it.
    const { width, height } = this._els.view.getBoundingClientRect();
    const { width: w, height: h } = this._info;
    const rendered = w && h && height ? Math.min(width, (height * w) / h) : width;
    const wanted = rendered * (window.devicePixelRatio || 1);
    const sorted = [...widths].sort((a, b) => a - b);
    const chosen = sorted.find((x) => x >= wanted - 0.5) ?? sorted[sorted.length - 1];
    const format = ["avif", "webp"].find((f) => formats.includes(f)) || formats[0] || "jpg";
    return { width: chosen, url: url.replace("{width}", chosen).replace("{format}", format) };
  }

  /** Show the rendition that fits once it is decoded, above the current image: no flash. */
  async _showRendition() {
    if (!this._info?.stages.display) return;
    const choice = this._chooseRendition();
    if (!choice || choice.width <= this._dispWidth || choice.url === this._dispLoading) return;
    this._dispLoading = choice.url;
    const run = this._run;
    const img = new Image();
    img.alt = "";
    img.className = "disp";
    img.src = choice.url;
    try {
      await img.decode();
    } catch {
      if (run !== this._run || this._dispLoading !== choice.url) return;
      this._dispLoading = null;
      if (this.stage === "loading") this._fail("The image could not be loaded.");
      return;
    }
    if (run !== this._run || this._dispLoading !== choice.url) return; // superseded
    this._dispLoading = null;
    const { ph, loader, view, canvas } = this._els;
    const old = this._disp;
    const fade = !old && this.stage === "placeholder";
    if (fade) img.classList.add("entering");
    view.insertBefore(img, canvas);
    [this._disp, this._dispWidth] = [img, choice.width];
    if (fade) {
      img.getBoundingClientRect(); // commit the transparent state so the fade runs
      img.classList.remove("entering");
      setTimeout(() => (ph.hidden = true), 300);
    } else {
      ph.hidden = true;
    }
    old?.remove();
    loader.hidden = true;
    this._set("stage", "display");
    this._draw();
  }

  _fail(text = "The image is unavailable.", code = "") {
    this._stop();
    const { msg, ph, loader, ctl, view } = this._els;
    const [title, detail] = [document.createElement("strong"), document.createElement("span")];
    const alt = this.getAttribute("alt");
    title.textContent = alt ? `Image unavailable: ${alt}` : "Image unavailable";
    detail.textContent = text;
    msg.replaceChildren(title, detail);
    msg.dataset.error = code;
    msg.hidden = false;
    ph.hidden = loader.hidden = ctl.hidden = true;
    this._disp?.remove();
    this._disp = null;
    view.className = "view";
    view.removeAttribute("tabindex");
    this._set("stage", "error");
  }

  _resized() {
    cancelAnimationFrame(this._resizeFrame);
    this._resizeFrame = requestAnimationFrame(() => {
      this._showRendition();
      this._setZoom(this._z, this._cx, this._cy);
    });
  }

  // ---- Hyper Zoom: the view is a zoom factor (1 = whole image) and a centre in original px

  async _prepareZoom(info) {
    this._dzLoading = true;
    const run = this._run;
    try {
      const res = await fetch(info.zoom.dzi);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const image = new DOMParser().parseFromString(await res.text(), "application/xml").documentElement;
      const size = image.getElementsByTagNameNS("*", "Size")[0];
      const [w, h] = ["Width", "Height"].map((a) => Number(size.getAttribute(a)));
      const tileSize = Number(image.getAttribute("TileSize"));
      if (!(w > 0 && h > 0 && tileSize > 0)) throw new Error("bad DZI");
      if (run !== this._run) return;
      this._dz = {
        w, h, tileSize,
        overlap: Number(image.getAttribute("Overlap")) || 0,
        format: image.getAttribute("Format") || "jpg",
        maxLevel: Math.ceil(Math.log2(Math.max(w, h))),
        files: info.zoom.dzi.replace(/\.dzi$/, "_files/"),
      };
      [this._cx, this._cy] = [w / 2, h / 2];
      this._els.view.classList.add("zoomable");
      this._els.view.tabIndex = 0;
      this._set("zoom", "ready");
    } catch {
      if (run === this._run) this._els.hint.textContent = "Zoom unavailable";
    } finally {
      if (run === this._run) this._dzLoading = false;
    }
    this._updateControls();
  }

  /** The frame's size and the scale (CSS px per original px) at which the whole image fits. */
  _metrics() {
    const { w, h } = this._dz;
    const { clientWidth: cw, clientHeight: ch } = this._els.view;
    const dpr = window.devicePixelRatio || 1;
    const fit = Math.min(cw / w, ch / h) || 1;
    const maxZoom = Math.max(1, 1 / (fit * dpr)); // at most one original pixel per device pixel
    return { cw, ch, dpr, fit, maxZoom };
  }

  /** The view now: scale s (CSS px per original px) and the image's origin on screen (ox, oy). */
  _layout() {
    const m = this._metrics();
    const s = m.fit * this._z;
    return { ...m, s, ox: m.cw / 2 - this._cx * s, oy: m.ch / 2 - this._cy * s };
  }

  /** A view clamped to full resolution, and so that no gap opens at an edge. */
  _clamp(z, cx, cy) {
    const { cw, ch, fit, maxZoom } = this._metrics();
    z = Math.min(Math.max(z, 1), maxZoom);
    if (z < 1.0005) z = 1;
    const s = fit * z;
    const clamp = (c, size, view) =>
      size * s <= view ? size / 2 : Math.min(Math.max(c, view / 2 / s), size - view / 2 / s);
    return { z, cx: clamp(cx, this._dz.w, cw), cy: clamp(cy, this._dz.h, ch) };
  }

  _setZoom(z, cx, cy) {
    if (!this._dz) return;
    ({ z: this._z, cx: this._cx, cy: this._cy } = this._clamp(z, cx, cy));
    this._draw();
    this._updateControls();
  }

  /** Zoom by `factor`, keeping the image point under (px, py) (frame CSS px) in place. */
  _zoomAt(factor, px, py, animate = false) {
    if (!this._dz) return;
    // Keys pressed mid-animation add up: start from where the animation is going.
    const from = animate && this._animating ? this._target : { z: this._z, cx: this._cx, cy: this._cy };
    const { fit, maxZoom, cw, ch } = this._metrics();
    if (px === undefined) [px, py] = [cw / 2, ch / 2];
    const z = Math.min(Math.max(from.z * factor, 1), maxZoom);
    const [dx, dy] = [px - cw / 2, py - ch / 2];
    const cx = from.cx + dx / (fit * from.z) - dx / (fit * z);
    const cy = from.cy + dy / (fit * from.z) - dy / (fit * z);
    if (animate) this._animateTo(z, cx, cy);
    else this._setZoom(z, cx, cy);
  }

  _panBy(dx, dy) {
    if (!this._dz) return;
    const { s } = this._layout();
    this._setZoom(this._z, this._cx - dx / s, this._cy - dy / s);
  }

  _animateTo(z, cx, cy) {
    cancelAnimationFrame(this._anim);
    this._target = this._clamp(z, cx, cy);
    ({ z, cx, cy } = this._target);
    const [z0, cx0, cy0] = [this._z, this._cx, this._cy];
    const reduce = matchMedia("(prefers-reduced-motion: reduce)").matches;
    const start = performance.now();
    const step = (now) => {
      const t = reduce ? 1 : Math.min((now - start) / 180, 1);
      const e = 1 - (1 - t) ** 3;
      this._animating = t < 1;
      this._setZoom(z0 * (z / z0) ** e, cx0 + (cx - cx0) * e, cy0 + (cy - cy0) * e);
      if (t < 1) this._anim = requestAnimationFrame(step);
    };
    this._animating = true;
    this._anim = requestAnimationFrame(step);
  }

  /** Zoom state: factor (1 = fit), DeepZoom level drawn, visible rectangle in original px, busy. */
  get view() {
    if (!this._dz) return { zoom: 1, maxZoom: 1, level: null, busy: false };
    const { cw, ch, s, ox, oy, maxZoom } = this._layout();
    const [x, y] = [Math.max(0, -ox / s), Math.max(0, -oy / s)];
    const [width, height] = [Math.min(this._dz.w, (cw - ox) / s) - x, Math.min(this._dz.h, (ch - oy) / s) - y];
    const busy = !!(this._animating || this._settleTimer || this._drawFrame || this._loading || this._queue.length);
    return { zoom: this._z, maxZoom, level: this._level, maxLevel: this._dz.maxLevel, busy, x, y, width, height };
  }

  zoomIn() { this._zoomAt(2, undefined, undefined, true); }
  zoomOut() { this._zoomAt(0.5, undefined, undefined, true); }
  resetZoom() { if (this._dz) this._animateTo(1, this._dz.w / 2, this._dz.h / 2); }

  _updateControls() {
    const { zin, zout, reset, hint, view } = this._els;
    const ready = !!this._dz;
    zin.disabled = !ready || this._z >= this._metrics().maxZoom - 1e-6;
    zout.disabled = reset.disabled = !ready || this._z <= 1;
    hint.hidden = ready;
    for (const b of [zin, zout, reset]) b.setAttribute("aria-describedby", ready ? "" : "hint");
    view.classList.toggle("zoomed", ready && this._z > 1);
  }

  // ---- drawing the zoomed view

  _draw() {
    this._drawFrame ||= requestAnimationFrame(() => {
      this._drawFrame = 0;
      this._render();
    });
  }

  /** The tiles of `level` that intersect the visible part of the image (inclusive ranges). */
  _tileRange(level, L) {
    const { w, h, tileSize, maxLevel } = this._dz;
    const f = 2 ** (maxLevel - level); // original px per level px
    const span = tileSize * f;
    const last = (size) => Math.ceil(Math.ceil(size / f) / tileSize) - 1;
    const x0 = Math.max(0, -L.ox / L.s), x1 = Math.min(w, (L.cw - L.ox) / L.s);
    const y0 = Math.max(0, -L.oy / L.s), y1 = Math.min(h, (L.ch - L.oy) / L.s);
    return {
      f,
      c0: Math.floor(x0 / span), c1: Math.min(last(w), Math.ceil(x1 / span) - 1),
      r0: Math.floor(y0 / span), r1: Math.min(last(h), Math.ceil(y1 / span) - 1),
    };
  }

  _render() {
    const dz = this._dz;
    if (!dz || this._z <= 1) {
      [this._level, this._queue] = [null, []];
      return;
    }
    const L = this._layout();
    const canvas = this._els.canvas;
    const [cw, ch] = [Math.round(L.cw * L.dpr), Math.round(L.ch * L.dpr)];
    if (canvas.width !== cw || canvas.height !== ch) [canvas.width, canvas.height] = [cw, ch];
    const ctx = canvas.getContext("2d");
    ctx.setTransform(L.dpr, 0, 0, L.dpr, 0, 0);
    ctx.clearRect(0, 0, L.cw, L.ch);
    ctx.imageSmoothingQuality = "high";
    const base = this._disp || (this._els.ph.naturalWidth ? this._els.ph : null);
    if (base) ctx.drawImage(base, L.ox, L.oy, dz.w * L.s, dz.h * L.s);
    // The coarsest level at least as dense as the screen; none while the rendition suffices.
    const need = L.s * L.dpr;
    const level = this._dispWidth / dz.w >= need ? null
      : Math.min(dz.maxLevel, Math.max(0, dz.maxLevel + Math.ceil(Math.log2(need) - 1e-9)));
    this._level = level;
    const wanted = [];
    // Coarser levels first: their tiles stay visible under the sharper ones still loading.
    for (let lv = 0; level !== null && lv <= level; lv++) {
      const r = this._tileRange(lv, L);
      const [cc, rc] = [(r.c0 + r.c1) / 2, (r.r0 + r.r1) / 2];
      for (let row = r.r0; row <= r.r1; row++) {
        for (let col = r.c0; col <= r.c1; col++) {
          const key = `${lv}/${col}_${row}`;
          const tile = this._tiles.get(key);
          if (tile?.ready) this._drawTile(ctx, tile.img, col, row, r.f, L);
          else if (lv === level && !tile) wanted.push({ key, d: Math.hypot(col - cc, row - rc) });
        }
      }
    }
    // Nearest the centre first; tiles that left the view before their turn are never requested,
    // nor are any mid-gesture (the levels passed through would be wasted).
    const settling = this._animating || this._settleTimer;
    this._queue = settling ? [] : wanted.sort((a, b) => a.d - b.d).map((t) => t.key);
    this._pump();
  }

  _drawTile(ctx, img, col, row, f, L) {
    const { tileSize, overlap } = this._dz;
    const x = (col * tileSize - (col ? overlap : 0)) * f;
    const y = (row * tileSize - (row ? overlap : 0)) * f;
    const k = f * L.s;
    ctx.drawImage(img, L.ox + x * L.s, L.oy + y * L.s, img.naturalWidth * k, img.naturalHeight * k);
  }

  _pump() {
    while (this._loading < MAX_TILE_LOADS && this._queue.length) {
      const key = this._queue.shift();
      const tile = { img: new Image(), ready: false };
      this._tiles.set(key, tile);
      this._loading++;
      const run = this._run;
      tile.img.src = `${this._dz.files}${key}.${this._dz.format}`;
      tile.img.decode().then(() => (tile.ready = true), () => (tile.failed = true)).finally(() => {
        if (run !== this._run) return;
        this._loading--;
        for (const [k, t] of this._tiles) {
          if (this._tiles.size <= MAX_TILES_KEPT) break;
          if (t.ready || t.failed) this._tiles.delete(k); // the oldest first
        }
        this._draw();
      });
    }
  }

  /** Hold tile requests until the wheel or pinch pauses. */
  _settle() {
    clearTimeout(this._settleTimer);
    this._settleTimer = setTimeout(() => {
      this._settleTimer = 0;
      this._draw();
    }, 120);
  }

  // ---- input

  _bind() {
    const { view, zin, zout, reset } = this._els;
    zin.onclick = () => this.zoomIn();
    zout.onclick = () => this.zoomOut();
    reset.onclick = () => this.resetZoom();
    const point = (e) => {
      const r = view.getBoundingClientRect();
      return [e.clientX - r.left, e.clientY - r.top];
    };
    const interrupt = () => {
      cancelAnimationFrame(this._anim);
      this._animating = false;
    };

    view.addEventListener("wheel", (e) => {
      if (!this._dz) return;
      const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? view.clientHeight : 1;
      const factor = Math.exp(-e.deltaY * unit * (e.ctrlKey ? 0.01 : 0.002)); // ctrl: trackpad pinch
      if (factor < 1 && this._z <= 1) return; // nothing to zoom out of: let the page scroll
      e.preventDefault();
      interrupt();
      this._settle();
      this._zoomAt(factor, ...point(e));
    }, { passive: false });

    let pointerType = "mouse";
    view.addEventListener("dblclick", (e) => {
      if (!this._dz || pointerType !== "mouse") return; // touch double taps: see pointerup
      e.preventDefault();
      this._zoomAt(e.shiftKey ? 0.5 : 2, ...point(e), true);
    });

    // Pointers: one drags, two pinch; a quick double tap zooms in.
    const pointers = new Map();
    let gesture = null;
    let lastTap = null;
    view.addEventListener("pointerdown", (e) => {
      pointerType = e.pointerType;
      if (!this._dz || (e.pointerType === "mouse" && e.button !== 0)) return;
      view.setPointerCapture(e.pointerId);
      pointers.set(e.pointerId, point(e));
      gesture = { moved: false, start: point(e) };
      interrupt();
    });
    view.addEventListener("pointermove", (e) => {
      const prev = pointers.get(e.pointerId);
      if (!prev) return;
      const now = point(e);
      if (pointers.size === 2) {
        const other = [...pointers.values()].find((p) => p !== prev);
        const d0 = Math.hypot(prev[0] - other[0], prev[1] - other[1]);
        const d1 = Math.hypot(now[0] - other[0], now[1] - other[1]);
        this._settle();
        if (d0 > 0) this._zoomAt(d1 / d0, (now[0] + other[0]) / 2, (now[1] + other[1]) / 2);
        this._panBy((now[0] - prev[0]) / 2, (now[1] - prev[1]) / 2);
      } else if (this._z > 1) {
        this._panBy(now[0] - prev[0], now[1] - prev[1]);
      }
      if (Math.hypot(now[0] - gesture.start[0], now[1] - gesture.start[1]) > 8) gesture.moved = true;
      pointers.set(e.pointerId, now);
    });
    const end = (e) => {
      if (!pointers.delete(e.pointerId)) return;
      if (e.type !== "pointerup" || e.pointerType === "mouse" || gesture.moved || pointers.size) return;
      const [p, t] = [point(e), performance.now()];
      const double = lastTap && t - lastTap.t < 350 && Math.hypot(p[0] - lastTap.p[0], p[1] - lastTap.p[1]) < 30;
      if (double) this._zoomAt(2, ...p, true);
      lastTap = double ? null : { t, p };
    };
    view.addEventListener("pointerup", end);
    view.addEventListener("pointercancel", end);

    const zoomKey = (factor) => () => this._zoomAt(factor, undefined, undefined, true);
    const panKey = (dx, dy) => () => {
      const { cw, ch } = this._metrics();
      this._panBy(dx * cw * 0.15, dy * ch * 0.15);
    };
    const keys = {
      "+": zoomKey(1.5), "=": zoomKey(1.5), "-": zoomKey(1 / 1.5), "_": zoomKey(1 / 1.5),
      "0": () => this.resetZoom(),
      ArrowLeft: panKey(1, 0), ArrowRight: panKey(-1, 0), ArrowUp: panKey(0, 1), ArrowDown: panKey(0, -1),
    };
    this.shadowRoot.querySelector(".frame").addEventListener("keydown", (e) => {
      const action = keys[e.key];
      if (!this._dz || !action || e.altKey || e.ctrlKey || e.metaKey) return;
      if (e.key.startsWith("Arrow") && this._z <= 1) return; // nothing to pan: let the page scroll
      e.preventDefault();
      action();
    });
  }
}

if (!customElements.get("smart-frame")) customElements.define("smart-frame", SmartFrame);
export { SmartFrame };
