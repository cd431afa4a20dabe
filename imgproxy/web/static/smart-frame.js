// <smart-frame image-id="..."> — a first cut: placeholder, then the display rendition that
// fits the element. Hyper Zoom and the full stage handling arrive with the web component issue.
const css = `:host{display:block;position:relative;overflow:hidden;background:#eee}
img{display:block;width:100%;height:auto}
.ph{filter:blur(12px);transform:scale(1.05)}
.msg{padding:1rem;font:14px system-ui,sans-serif;color:#900}`;

class SmartFrame extends HTMLElement {
  connectedCallback() {
    const root = this.shadowRoot || this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${css}</style><img alt="">`;
    this.img = root.querySelector("img");
    this.img.alt = this.getAttribute("alt") || "";
    this.load();
  }
  get base() {
    return (this.getAttribute("src-base") || new URL(import.meta.url).origin).replace(/\/$/, "");
  }
  async load() {
    const id = encodeURIComponent(this.getAttribute("image-id") || "");
    const res = await fetch(`${this.base}/images/${id}/info.json`);
    if (!res.ok) return this.fail((await res.json()).error || "image unavailable");
    const info = await res.json();
    if (info.status === "error") return this.fail(`image unavailable (${info.error})`);
    if (info.stages.display) {
      const want = this.clientWidth * (window.devicePixelRatio || 1);
      const widths = info.renditions.widths;
      const w = widths.find((x) => x >= want) || widths[widths.length - 1];
      this.img.className = "";
      this.img.src = info.renditions.url.replace("{width}", w).replace("{format}", info.renditions.formats[0]);
    } else {
      if (info.stages.placeholder) { this.img.className = "ph"; this.img.src = info.placeholder; }
      setTimeout(() => this.load(), 1000);
    }
  }
  fail(text) {
    this.shadowRoot.innerHTML = `<style>${css}</style><p class="msg" role="alert"></p>`;
    this.shadowRoot.querySelector(".msg").textContent = text;
  }
}
customElements.define("smart-frame", SmartFrame);
