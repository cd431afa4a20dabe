// <smart-frame> — the imgproxy viewer (SPEC §7). One file, no dependencies, no build step.
//
//   <script type="module" src="https://proxy.example/smart-frame.js"></script>
//   <smart-frame image-id="IMG_0042" alt="A harbour at dusk"></smart-frame>
//
// Attributes: image-id; src-base (the proxy, default: where this file came from); alt;
// loading="lazy" (wait until the frame nears the viewport). Sized by CSS like an <img>: a block
// as wide as its container with the image's aspect ratio once known (3:2 before); give it a width,
// a height or both (the image is then contained).
// Stages: a loader, the placeholder (scaled up, blurred), the rendition whose width fits the
// rendered width × devicePixelRatio (re-chosen when the frame grows), then Hyper Zoom over the
// DeepZoom tiles. Stages come from /images/{id}/events, with polling of info.json as fallback.
// For pages and tests: attributes stage="loading|placeholder|display|error" and
// zoom="preparing|ready", a bubbling "stagechange" event, and the `view` property.

const MAX_STREAMS = 3; // open event streams per proxy: HTTP/1.1 gives ~6 connections per host
const MAX_TILE_LOADS = 6; // tile requests in flight per frame
const MAX_TILES_KEPT = 600; // decoded tiles kept per frame
const streams = new Map(); // proxy base → open EventSource count

const CSS = `
:host{display:block;position:relative;aspect-ratio:3/2;overflow:hidden;background:#e9e9ec;
  border-radius:inherit;contain:content}
:host([hidden]){display:none}
.frame,.view{position:absolute;inset:0}
.frame{container-type:size}
.view{outline:none;touch-action:auto}
.view:focus-visible{box-shadow:inset 0 0 0 3px #2563eb}
.view.zoomable{cursor:zoom-in;touch-action:pan-x pan-y}
.view.zoomed{cursor:grab;touch-action:none}
.view.dragging{cursor:grabbing}
img,canvas{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;
  user-select:none;-webkit-user-drag:none;pointer-events:none}
.ph{filter:blur(clamp(6px,3cqw,28px));transform:scale(1.06)}
.disp{transition:opacity .25s ease-out}
.disp.entering{opacity:0}
.view.zoomed img{visibility:hidden}
canvas{display:none}
.view.zoomed canvas{display:block}
.loader{position:absolute;inset:0;display:grid;place-items:center}
.loader span{width:28px;height:28px;border-radius:50%;border:3px solid #0002;
  border-top-color:#555;animation:spin .9s linear infinite}
@keyframes spin{to{transform:rotate(1turn)}}
@media (prefers-reduced-motion:reduce){.loader span{animation-duration:3s}.disp{transition:none}}
.msg{position:absolute;inset:0;margin:0;padding:1rem;display:flex;flex-direction:column;gap:.25rem;
  align-items:center;justify-content:center;text-align:center;background:#f4f1f1;color:#7a1c1c;
  font:14px/1.4 system-ui,sans-serif}
.msg strong{font-size:15px}
.ctl{position:absolute;right:8px;bottom:8px;display:flex;align-items:center;gap:4px;
  font:12px/1 system-ui,sans-serif}
.ctl button{width:32px;height:32px;padding:0;border:0;border-radius:6px;cursor:pointer;
  background:#111c;color:#fff;font:20px/32px system-ui,sans-serif}
.ctl button:hover:not(:disabled){background:#000e}
.ctl button:focus-visible{outline:2px solid #fff;box-shadow:0 0 0 4px #2563eb}
.ctl button:disabled{cursor:default;background:#1117;color:#fff8}
.hint{order:-1;padding:6px 8px;border-radius:6px;background:#111c;color:#fff}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
[hidden]{display:none!important}
`;

const TEMPLATE = `<style>${CSS}</style><style class="ratio"></style>
<div class="frame">
  <div class="view" role="img">
    <img class="ph" alt="" hidden>
    <canvas></canvas>
  </div>
  <div class="loader" role="status"><span></span><b class="sr">Loading image…</b></div>
  <p class="msg" role="alert" hidden></p>
  <div class="ctl" role="group" aria-label="Zoom" hidden>
    <span class="hint" id="hint">Preparing zoom…</span>
    <button type="button" class="out" aria-label="Zoom out" title="Zoom out (−)" disabled>−</button>
    <button type="button" class="reset" aria-label="Reset zoom" title="Reset zoom (0)" disabled>⟲</button>
    <button type="button" class="in" aria-label="Zoom in" title="Zoom in (+)" disabled>+</button>
  </div>
</div>`;

const MESSAGES = {
  originalNotFound: "The image was not found.",
  invalidImage: "The file is not an image that can be shown.",
  uploadError: "The image could not be fetched from its source. Please try again later.",
};

const finished = (info) => info.status === "ready" || info.status === "error";

/** Load and decode an image off-screen; resolves with the element once it can be painted. */
async function decoded(url, className) {
  const img = new Image();
  img.alt = "";
  img.decoding = "async";
  if (className) img.className = className;
  img.src = url;
  await img.decode();
  return img;
}

class SmartFrame extends HTMLElement {
  static observedAttributes = ["image-id", "src-base", "alt"];

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open", delegatesFocus: true });
    root.innerHTML = TEMPLATE;
    const $ = (sel) => root.querySelector(sel);
    this._els = {
      ratio: $(".ratio"), view: $(".view"), ph: $(".ph"), canvas: $("canvas"), loader: $(".loader"),
      msg: $(".msg"), ctl: $(".ctl"), hint: $(".hint"),
      zin: $(".in"), zout: $(".out"), reset: $(".reset"),
    };
    this._disp = null; // the <img> of the rendition shown
    this._dispWidth = 0;
    this._run = 0; // bumped on every (re)start; async work of an older run is dropped
    this._bind();
  }

  // ---- lifecycle -------------------------------------------------------------------------

  connectedCallback() {
    this._resizer = new ResizeObserver(() => this._resized());
    this._resizer.observe(this);
    this._watchDpr();
    this._start();
  }

  disconnectedCallback() {
    this._stop();
    this._resizer?.disconnect();
    this._dprQuery?.removeEventListener("change", this._dprChanged);
  }

  attributeChangedCallback(name, old, value) {
    if (name === "alt") this._label();
    else if (old !== value && this.isConnected) this._start();
  }

  get base() {
    const base = this.getAttribute("src-base") || new URL("./", import.meta.url).href;
    return base.replace(/\/+$/, "");
  }

  get imageId() {
    return this.getAttribute("image-id") || "";
  }

  /** The stage shown: loading, placeholder, display or error. */
  get stage() {
    return this.getAttribute("stage") || "loading";
  }

  /** The last info.json object received (null before the first). */
  get info() {
    return this._info || null;
  }

  _stop() {
    this._run++;
    this._closeStream();
    clearTimeout(this._pollTimer);
    this._lazy?.disconnect();
    cancelAnimationFrame(this._anim);
  }

  _start() {
    this._stop();
    const run = this._run;
    this._info = null;
    this._dz = null;
    this._tiles = new Map();
    this._loading = 0;
    this._queue = [];
    this._z = 1;
    this._cx = this._cy = 0;
    this._disp?.remove();
    this._disp = null;
    this._dispWidth = 0;
    this._dispLoading = this._phUrl = null;
    this._level = null;
    this._pollDelay = 0;
    this._failures = 0;
    const { ph, msg, ctl, loader, view, ratio } = this._els;
    ph.hidden = true;
    ph.removeAttribute("src");
    msg.hidden = true;
    ctl.hidden = true;
    loader.hidden = false;
    ratio.textContent = "";
    view.className = "view";
    view.removeAttribute("tabindex");
    this.removeAttribute("zoom");
    this._setStage("loading");
    this._label();
    this._updateControls();
    if (!this.imageId) return this._fail("No image-id given.");
    if (this.getAttribute("loading") === "lazy" && "IntersectionObserver" in window) {
      this._lazy = new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) {
          this._lazy.disconnect();
          if (run === this._run) this._fetchInfo(run, true);
        }
      }, { rootMargin: "300px" });
      this._lazy.observe(this);
    } else {
      this._fetchInfo(run, true);
    }
  }

  _setStage(stage) {
    if (this.getAttribute("stage") === stage) return;
    this.setAttribute("stage", stage);
    this.toggleAttribute("aria-busy", stage === "loading");
    this._emit();
  }

  _setZoomState(zoom) {
    if (this.getAttribute("zoom") === zoom) return;
    this.setAttribute("zoom", zoom);
    this._emit();
  }

  _emit() {
    const stage = this.stage;
    this.dispatchEvent(new CustomEvent("stagechange", {
      bubbles: true, composed: true, detail: { stage, zoom: this.getAttribute("zoom") || null },
    }));
  }

  _label() {
    const alt = this.getAttribute("alt");
    this._els.view.setAttribute("aria-label", alt || `Image ${this.imageId}`);
  }

  // ---- stages from the server --------------------------------------------------------------

  _url(path) {
    return `${this.base}/images/${encodeURIComponent(this.imageId)}/${path}`;
  }

  /** GET info.json once; then follow the events stream, or keep polling when it is unavailable. */
  async _fetchInfo(run, first = false) {
    let info;
    try {
      const res = await fetch(this._url("info.json"), { cache: "no-store" });
      if (run !== this._run) return;
      const body = await res.json().catch(() => ({}));
      if (run !== this._run) return;
      if (!res.ok) {
        if (res.status === 404 || res.status === 400) {
          return this._fail(res.status === 404 ? `Image “${this.imageId}” was not found.` : body.error);
        }
        throw new Error(`HTTP ${res.status}`);
      }
      info = body;
      this._failures = 0;
    } catch (err) {
      if (run !== this._run) return;
      this._failures = (this._failures || 0) + 1;
      if (this._failures >= 5 && this.stage === "loading") {
        return this._fail("The image service could not be reached.");
      }
      return this._poll(run);
    }
    this._apply(info);
    if (finished(info)) return;
    if (first && this._openStream(run)) return;
    this._poll(run);
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
      if (run !== this._run) return;
      let info;
      try {
        info = JSON.parse(event.data);
      } catch {
        return;
      }
      this._apply(info);
      if (finished(info)) this._closeStream();
    };
    source.onerror = () => {
      // The stream broke (or was refused): poll instead of letting EventSource reconnect forever.
      this._closeStream();
      if (run === this._run) this._poll(run);
    };
    return true;
  }

  _closeStream() {
    if (!this._stream) return;
    const { source, base } = this._stream;
    source.close();
    streams.set(base, Math.max(0, (streams.get(base) || 1) - 1));
    this._stream = null;
  }

  _apply(info) {
    if (info.status === "error") {
      return this._fail(MESSAGES[info.error] || "The image is unavailable.", info.error);
    }
    const prev = this._info;
    this._info = info;
    if (info.width && info.height) {
      this._els.ratio.textContent = `:host{aspect-ratio:${info.width}/${info.height}}`;
    }
    if (prev && prev.version !== info.version) {
      this._dispWidth = 0; // a new version: renditions and tiles change
      this._dz = null;
      this._tiles = new Map();
    }
    if (info.stages.display) this._showRendition();
    else if (info.stages.placeholder) this._showPlaceholder(info.placeholder);
    if (info.stages.zoom && !this._dz && !this._dzLoading) this._prepareZoom(info);
    if (!this._dz) this._setZoomState("preparing");
    this._els.ctl.hidden = false;
    this._updateControls();
  }

  async _showPlaceholder(url) {
    if (this._phUrl === url) return;
    this._phUrl = url;
    const run = this._run;
    try {
      const img = await decoded(url);
      if (run !== this._run || this.stage !== "loading") return;
      this._els.ph.src = img.src;
      await this._els.ph.decode();
    } catch {
      return; // keep the loader: the display stage or a poll will follow
    }
    if (run !== this._run || this.stage !== "loading") return;
    this._els.ph.hidden = false;
    this._els.loader.hidden = true;
    this._setStage("placeholder");
  }

  /** The rendered width of the image in CSS px (the frame may letterbox it). */
  _renderedWidth() {
    const { width, height } = this._els.view.getBoundingClientRect();
    const info = this._info;
    if (!info?.width || !info?.height || !height) return width;
    return Math.min(width, (height * info.width) / info.height);
  }

  _chooseRendition() {
    const { widths = [], formats = [], url } = this._info.renditions;
    if (!widths.length || !url) return null;
    const sorted = [...widths].sort((a, b) => a - b);
    const wanted = this._renderedWidth() * (window.devicePixelRatio || 1);
    const width = sorted.find((w) => w >= wanted - 0.5) ?? sorted[sorted.length - 1];
    const format = ["avif", "webp"].find((f) => formats.includes(f)) || formats[0] || "jpg";
    return { width, url: url.replace("{width}", width).replace("{format}", format) };
  }

  /** Show the rendition that fits, once decoded, above the current image: no flash. */
  async _showRendition() {
    if (!this._info?.stages.display) return;
    const choice = this._chooseRendition();
    if (!choice || choice.width <= this._dispWidth || choice.url === this._dispLoading) return;
    this._dispLoading = choice.url;
    const run = this._run;
    let img;
    try {
      img = await decoded(choice.url, "disp");
    } catch {
      if (run === this._run && this._dispLoading === choice.url) this._dispLoading = null;
      if (run === this._run && this.stage === "loading") this._fail("The image could not be loaded.");
      return;
    }
    if (run !== this._run || this._dispLoading !== choice.url) return;
    this._dispLoading = null;
    if (choice.width <= this._dispWidth) return;
    const old = this._disp;
    const fade = !old && this.stage === "placeholder";
    if (fade) img.classList.add("entering");
    this._els.view.insertBefore(img, this._els.canvas);
    this._disp = img;
    this._dispWidth = choice.width;
    if (fade) {
      img.getBoundingClientRect(); // commit the transparent state so the fade runs
      img.classList.remove("entering");
      img.addEventListener("transitionend", () => (this._els.ph.hidden = true), { once: true });
      setTimeout(() => (this._els.ph.hidden = true), 400);
    } else {
      this._els.ph.hidden = true;
    }
    old?.remove();
    this._els.loader.hidden = true;
    this._setStage("display");
    this._draw();
  }

  _fail(text, code) {
    this._stop();
    const { msg, ph, loader, ctl, view } = this._els;
    msg.replaceChildren();
    const title = document.createElement("strong");
    const alt = this.getAttribute("alt");
    title.textContent = alt ? `Image unavailable: ${alt}` : "Image unavailable";
    const detail = document.createElement("span");
    detail.textContent = text || "The image is unavailable.";
    msg.append(title, detail);
    msg.hidden = false;
    if (code) msg.dataset.error = code;
    ph.hidden = loader.hidden = ctl.hidden = true;
    this._disp?.remove();
    this._disp = null;
    view.className = "view";
    view.removeAttribute("tabindex");
    this._setStage("error");
  }

  _resized() {
    cancelAnimationFrame(this._resizeFrame);
    this._resizeFrame = requestAnimationFrame(() => {
      this._showRendition();
      this._setZoom(this._z, this._cx, this._cy);
    });
  }

  _watchDpr() {
    this._dprQuery?.removeEventListener("change", this._dprChanged);
    this._dprQuery = matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`);
    this._dprChanged ||= () => {
      this._watchDpr();
      this._resized();
    };
    this._dprQuery.addEventListener("change", this._dprChanged);
  }

  // ---- Hyper Zoom: the view is a zoom factor (1 = whole image) and a centre in image px -------

  async _prepareZoom(info) {
    this._dzLoading = true;
    const run = this._run;
    try {
      const res = await fetch(info.zoom.dzi);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const doc = new DOMParser().parseFromString(await res.text(), "application/xml");
      const image = doc.documentElement;
      const size = image.getElementsByTagNameNS("*", "Size")[0];
      const w = Number(size.getAttribute("Width"));
      const h = Number(size.getAttribute("Height"));
      if (run !== this._run) return;
      this._dz = {
        w, h,
        tileSize: Number(image.getAttribute("TileSize")),
        overlap: Number(image.getAttribute("Overlap")),
        format: image.getAttribute("Format"),
        maxLevel: Math.ceil(Math.log2(Math.max(w, h))),
        files: info.zoom.dzi.replace(/\.dzi$/, "_files/"),
      };
      if (!(w > 0 && h > 0 && this._dz.tileSize > 0)) throw new Error("bad DZI");
      this._cx = w / 2;
      this._cy = h / 2;
      this._els.view.classList.add("zoomable");
      this._els.view.tabIndex = 0;
      this._setZoomState("ready");
    } catch {
      if (run === this._run) this._els.hint.textContent = "Zoom unavailable";
      this._dz = null;
    } finally {
      if (run === this._run) this._dzLoading = false;
    }
    this._updateControls();
  }

  /** The frame's size, the scale that fits the whole image (CSS px per original px), limits. */
  _metrics() {
    const { w, h } = this._dz;
    const cw = this._els.view.clientWidth;
    const ch = this._els.view.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    const fit = Math.min(cw / w, ch / h) || 1;
    const maxZoom = Math.max(1, 1 / (fit * dpr)); // one original pixel per device pixel at most
    return { cw, ch, dpr, fit, maxZoom };
  }

  /** The view now: scale s (CSS px per original px) and the image's origin on screen (ox, oy). */
  _layout() {
    const m = this._metrics();
    const s = m.fit * this._z;
    return { ...m, s, ox: m.cw / 2 - this._cx * s, oy: m.ch / 2 - this._cy * s };
  }

  /** Set zoom and centre, clamped so the image never leaves a gap it could fill. */
  _setZoom(z, cx, cy) {
    if (!this._dz) return;
    const { w, h } = this._dz;
    const { cw, ch, fit, maxZoom } = this._metrics();
    this._z = Math.min(Math.max(z, 1), maxZoom);
    if (this._z < 1.0005) this._z = 1;
    const s = fit * this._z;
    const clamp = (c, size, view) => {
      const half = view / 2 / s;
      return size * s <= view ? size / 2 : Math.min(Math.max(c, half), size - half);
    };
    this._cx = clamp(cx, w, cw);
    this._cy = clamp(cy, h, ch);
    this._draw();
    this._updateControls();
  }

  /** Zoom by `factor` keeping the image point under (px, py) (frame CSS px) in place. */
  _zoomAt(factor, px, py, animate = false) {
    if (!this._dz) return;
    const { s, ox, oy, maxZoom, cw, ch } = this._layout();
    if (px === undefined) [px, py] = [cw / 2, ch / 2];
    const z = Math.min(Math.max(this._z * factor, 1), maxZoom);
    const s2 = (s * z) / this._z;
    const ix = (px - ox) / s;
    const iy = (py - oy) / s;
    const cx = ix + (cw / 2 - px) / s2;
    const cy = iy + (ch / 2 - py) / s2;
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
    const from = { z: this._z, cx: this._cx, cy: this._cy };
    const reduce = matchMedia("(prefers-reduced-motion: reduce)").matches;
    const start = performance.now();
    const step = (now) => {
      const t = reduce ? 1 : Math.min((now - start) / 180, 1);
      const e = 1 - (1 - t) ** 3;
      this._animating = t < 1;
      this._setZoom(
        from.z * (z / from.z) ** e,
        from.cx + (cx - from.cx) * e,
        from.cy + (cy - from.cy) * e,
      );
      if (t < 1) this._anim = requestAnimationFrame(step);
    };
    this._anim = requestAnimationFrame(step);
  }

  /** The zoom state: factor (1 = fit), the DeepZoom level drawn and the visible image rectangle. */
  get view() {
    if (!this._dz) return { zoom: 1, maxZoom: 1, level: null, x: 0, y: 0, width: 0, height: 0 };
    const { cw, ch, s, ox, oy, maxZoom } = this._layout();
    const x = Math.max(0, -ox / s);
    const y = Math.max(0, -oy / s);
    return {
      zoom: this._z, maxZoom, level: this._level ?? null, animating: !!this._animating,
      x, y, width: Math.min(this._dz.w, (cw - ox) / s) - x, height: Math.min(this._dz.h, (ch - oy) / s) - y,
    };
  }

  zoomIn() { this._zoomAt(2, undefined, undefined, true); }
  zoomOut() { this._zoomAt(0.5, undefined, undefined, true); }
  resetZoom() { if (this._dz) this._animateTo(1, this._dz.w / 2, this._dz.h / 2); }

  _updateControls() {
    const { zin, zout, reset, hint, view } = this._els;
    const ready = !!this._dz;
    const max = ready ? this._metrics().maxZoom : 1;
    zin.disabled = !ready || this._z >= max - 1e-6;
    zout.disabled = reset.disabled = !ready || this._z <= 1;
    hint.hidden = ready;
    for (const b of [zin, zout, reset]) {
      if (ready) b.removeAttribute("aria-describedby");
      else b.setAttribute("aria-describedby", "hint");
    }
    view.classList.toggle("zoomed", ready && this._z > 1);
  }

  // ---- drawing ---------------------------------------------------------------------------

  _draw() {
    if (this._drawFrame) return;
    this._drawFrame = requestAnimationFrame(() => {
      this._drawFrame = 0;
      this._render();
    });
  }

  /** The range of tiles of `level` that intersect the visible part of the image. */
  _tileRange(level, L) {
    const { w, h, tileSize, maxLevel } = this._dz;
    const f = 2 ** (maxLevel - level); // original px per level px
    const cols = Math.ceil(Math.ceil(w / f) / tileSize);
    const rows = Math.ceil(Math.ceil(h / f) / tileSize);
    const x0 = Math.max(0, -L.ox / L.s), x1 = Math.min(w, (L.cw - L.ox) / L.s);
    const y0 = Math.max(0, -L.oy / L.s), y1 = Math.min(h, (L.ch - L.oy) / L.s);
    const span = tileSize * f;
    return {
      f,
      c0: Math.floor(x0 / span), c1: Math.min(cols - 1, Math.ceil(x1 / span) - 1),
      r0: Math.floor(y0 / span), r1: Math.min(rows - 1, Math.ceil(y1 / span) - 1),
    };
  }

  _render() {
    const dz = this._dz;
    const canvas = this._els.canvas;
    if (!dz || this._z <= 1) {
      this._level = null;
      this._queue = [];
      return;
    }
    const L = this._layout();
    const width = Math.round(L.cw * L.dpr), height = Math.round(L.ch * L.dpr);
    if (canvas.width !== width || canvas.height !== height) [canvas.width, canvas.height] = [width, height];
    const ctx = canvas.getContext("2d");
    ctx.setTransform(L.dpr, 0, 0, L.dpr, 0, 0);
    ctx.clearRect(0, 0, L.cw, L.ch);
    ctx.imageSmoothingQuality = "high";
    const base = this._disp || (this._els.ph.complete && this._els.ph.naturalWidth ? this._els.ph : null);
    if (base) ctx.drawImage(base, L.ox, L.oy, dz.w * L.s, dz.h * L.s);
    // The level whose pixels are at least as dense as the screen's; none if the rendition suffices.
    const need = L.s * L.dpr;
    const have = this._disp ? this._dispWidth / dz.w : 0;
    const level = have >= need ? null : Math.min(dz.maxLevel, Math.max(0, dz.maxLevel + Math.ceil(Math.log2(need) - 1e-9)));
    this._level = level;
    const wanted = [];
    if (level !== null) {
      // Coarser levels first, so loaded tiles stay visible under the sharper ones still loading.
      for (let lv = 0; lv <= level; lv++) {
        const r = this._tileRange(lv, L);
        for (let row = r.r0; row <= r.r1; row++) {
          for (let col = r.c0; col <= r.c1; col++) {
            const key = `${lv}/${col}_${row}`;
            const tile = this._tiles.get(key);
            if (tile?.ready) this._drawTile(ctx, tile.img, lv, col, row, r.f, L);
            else if (lv === level && !tile) wanted.push({ key, col, row, lv });
          }
        }
      }
    }
    // Nearest the centre first; tiles that left the view are never requested.
    const mid = level === null ? null : this._tileRange(level, L);
    if (mid) {
      const cc = (mid.c0 + mid.c1) / 2, rc = (mid.r0 + mid.r1) / 2;
      wanted.sort((a, b) => Math.hypot(a.col - cc, a.row - rc) - Math.hypot(b.col - cc, b.row - rc));
    }
    // Mid-gesture, request nothing: tiles for levels passed through would be wasted.
    const settling = this._animating || performance.now() < this._settleUntil;
    this._queue = settling ? [] : wanted;
    this._pump();
  }

  /** Hold tile requests until the wheel or pinch has paused. */
  _settle() {
    this._settleUntil = performance.now() + 120;
    clearTimeout(this._settleTimer);
    this._settleTimer = setTimeout(() => this._draw(), 130);
  }

  _drawTile(ctx, img, level, col, row, f, L) {
    const { tileSize, overlap } = this._dz;
    const x = (col * tileSize - (col ? overlap : 0)) * f;
    const y = (row * tileSize - (row ? overlap : 0)) * f;
    ctx.drawImage(img, L.ox + x * L.s, L.oy + y * L.s, img.naturalWidth * f * L.s, img.naturalHeight * f * L.s);
  }

  _pump() {
    while (this._loading < MAX_TILE_LOADS && this._queue.length) {
      const { key, col, row, lv } = this._queue.shift();
      if (this._tiles.has(key)) continue;
      const img = new Image();
      const tile = { img, ready: false };
      this._tiles.set(key, tile);
      this._loading++;
      const run = this._run;
      img.src = `${this._dz.files}${lv}/${col}_${row}.${this._dz.format}`;
      img.decode().then(
        () => (tile.ready = true),
        () => (tile.failed = true),
      ).finally(() => {
        if (run !== this._run) return;
        this._loading--;
        this._evict();
        this._draw();
      });
    }
  }

  _evict() {
    if (this._tiles.size <= MAX_TILES_KEPT) return;
    for (const [key, tile] of this._tiles) {
      if (this._tiles.size <= MAX_TILES_KEPT) break;
      if (tile.ready || tile.failed) this._tiles.delete(key);
    }
  }

  // ---- input -----------------------------------------------------------------------------

  _bind() {
    const { view, zin, zout, reset } = this._els;
    const frame = this.shadowRoot.querySelector(".frame");
    zin.addEventListener("click", () => this.zoomIn());
    zout.addEventListener("click", () => this.zoomOut());
    reset.addEventListener("click", () => this.resetZoom());
    const point = (e) => {
      const r = view.getBoundingClientRect();
      return [e.clientX - r.left, e.clientY - r.top];
    };

    view.addEventListener("wheel", (e) => {
      if (!this._dz) return;
      const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? view.clientHeight : 1;
      const factor = Math.exp(-e.deltaY * unit * (e.ctrlKey ? 0.01 : 0.002)); // ctrl: trackpad pinch
      if (factor < 1 && this._z <= 1) return; // let the page scroll
      e.preventDefault();
      cancelAnimationFrame(this._anim);
      this._animating = false;
      this._settle();
      this._zoomAt(factor, ...point(e));
    }, { passive: false });

    let pointerType = "mouse";
    view.addEventListener("dblclick", (e) => {
      if (!this._dz || pointerType !== "mouse") return; // touch double taps are handled below
      e.preventDefault();
      this._zoomAt(e.shiftKey ? 0.5 : 2, ...point(e), true);
    });

    // Pointers: one drags, two pinch; a quick double tap zooms in.
    const pointers = new Map();
    let lastTap = null;
    let gesture = null;
    view.addEventListener("pointerdown", (e) => {
      pointerType = e.pointerType;
      if (!this._dz || (e.pointerType === "mouse" && e.button !== 0)) return;
      view.setPointerCapture(e.pointerId);
      pointers.set(e.pointerId, point(e));
      gesture = { moved: false, start: point(e), t: performance.now() };
      cancelAnimationFrame(this._anim);
      this._animating = false;
    });
    view.addEventListener("pointermove", (e) => {
      const prev = pointers.get(e.pointerId);
      if (!prev) return;
      const now = point(e);
      if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        const other = a === prev ? b : a;
        const d0 = Math.hypot(prev[0] - other[0], prev[1] - other[1]);
        const d1 = Math.hypot(now[0] - other[0], now[1] - other[1]);
        const mid = [(now[0] + other[0]) / 2, (now[1] + other[1]) / 2];
        this._settle();
        if (d0 > 0) this._zoomAt(d1 / d0, ...mid);
        this._panBy((now[0] - prev[0]) / 2, (now[1] - prev[1]) / 2);
        gesture.moved = true;
      } else if (this._z > 1) {
        this._panBy(now[0] - prev[0], now[1] - prev[1]);
        view.classList.add("dragging");
      }
      if (gesture && Math.hypot(now[0] - gesture.start[0], now[1] - gesture.start[1]) > 8) gesture.moved = true;
      pointers.set(e.pointerId, now);
    });
    const end = (e) => {
      if (!pointers.delete(e.pointerId)) return;
      view.classList.remove("dragging");
      if (e.type !== "pointerup" || e.pointerType === "mouse" || !gesture || gesture.moved) return;
      const now = performance.now();
      const p = point(e);
      if (lastTap && now - lastTap.t < 350 && Math.hypot(p[0] - lastTap.p[0], p[1] - lastTap.p[1]) < 30) {
        this._zoomAt(2, ...p, true);
        lastTap = null;
      } else {
        lastTap = { t: now, p };
      }
    };
    view.addEventListener("pointerup", end);
    view.addEventListener("pointercancel", end);

    frame.addEventListener("keydown", (e) => {
      if (!this._dz || e.altKey || e.ctrlKey || e.metaKey) return;
      const step = 0.15;
      const { cw, ch } = this._layout();
      const keys = {
        "+": () => this._zoomAt(1.5, undefined, undefined, true),
        "=": () => this._zoomAt(1.5, undefined, undefined, true),
        "-": () => this._zoomAt(1 / 1.5, undefined, undefined, true),
        "_": () => this._zoomAt(1 / 1.5, undefined, undefined, true),
        "0": () => this.resetZoom(),
        ArrowLeft: () => this._panBy(cw * step, 0),
        ArrowRight: () => this._panBy(-cw * step, 0),
        ArrowUp: () => this._panBy(0, ch * step),
        ArrowDown: () => this._panBy(0, -ch * step),
      };
      const action = keys[e.key];
      if (!action || (e.key.startsWith("Arrow") && this._z <= 1)) return;
      e.preventDefault();
      action();
    });
  }
}

if (!customElements.get("smart-frame")) customElements.define("smart-frame", SmartFrame);
export { SmartFrame };
