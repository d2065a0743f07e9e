// Small DOM helpers. Text always goes in as text nodes (never as HTML): samples hold user text.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

function setAttributes(element, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export function byId(id) {
  return document.getElementById(id);
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(digits)}%`;
}

export function interval(range) {
  if (!range) return "";
  return `${(range[0] * 100).toFixed(1)}–${(range[1] * 100).toFixed(1)}%`;
}

export function count(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
}

export function time(iso, withDate = false) {
  const date = new Date(iso);
  const options = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  if (withDate) Object.assign(options, { year: "numeric", month: "2-digit", day: "2-digit" });
  return date.toLocaleString("en-GB", options);
}

export function message(error) {
  return error && error.message ? error.message : String(error);
}
