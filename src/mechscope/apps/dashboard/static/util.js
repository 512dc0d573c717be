// DOM and SVG helpers shared by every view. Values go into data-* attributes unrounded
// (String(number) round-trips a float64), and rounded only in the visible text.
// The SVG namespace, as the HTML parser assigns it (the page then holds no URL literal at all).
const SVG_NS = (() => {
  const box = document.createElement("div");
  box.innerHTML = "<svg></svg>";
  return box.firstChild.namespaceURI;
})();

export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of [].concat(children)) node.append(child instanceof Node ? child : String(child));
  return node;
}

export function svgEl(tag, attrs = {}, children = []) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const child of [].concat(children)) node.append(child);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP, unlike style=""
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return Number(x.toFixed(digits)).toString();
}

// White to orange by a fraction in [0, 1] (token highlighting, histograms).
export function heat(frac) {
  const f = Math.max(0, Math.min(1, frac));
  return `rgb(255, ${Math.round(255 - 120 * f)}, ${Math.round(255 - 230 * f)})`;
}

// Blue (negative) to white to red (positive), symmetric around zero.
export function diverging(value, limit) {
  const f = limit > 0 ? Math.max(-1, Math.min(1, value / limit)) : 0;
  if (Number.isNaN(f)) return "#ccc";
  return f >= 0
    ? `rgb(255, ${Math.round(255 - 200 * f)}, ${Math.round(255 - 200 * f)})`
    : `rgb(${Math.round(255 + 200 * f)}, ${Math.round(255 + 200 * f)}, 255)`;
}

export function visibleToken(text) {
  return text.replace(/\n/g, "↵").replace(/\t/g, "⇥");
}
