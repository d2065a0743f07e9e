// The admin JSON routes, called with the admin key as a bearer token. The key lives in this
// tab's sessionStorage only: never in a URL, a cookie or localStorage.

const KEY = "perg-proxy.admin-key";
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = error ? error.code : null;
    this.param = error ? error.param : null;
  }
}

export function adminKey() {
  return sessionStorage.getItem(KEY);
}

export function signIn(key) {
  sessionStorage.setItem(KEY, key);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

export function whenSignedOut(callback) {
  onSignedOut = callback;
}

// `path` is relative to /perg/ (the page is /perg/ui): "monitor/summary" is /perg/monitor/summary.
export async function api(path, { method = "GET", query = {}, body } = {}) {
  const key = adminKey();
  if (!key) throw new ApiError(401, { message: "Not signed in." });
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Authorization: `Bearer ${key}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, data && data.error);
    if (response.status === 401) {
      signOut();
      onSignedOut(error);
    }
    throw error;
  }
  return data;
}

export function segment(text) {
  return encodeURIComponent(text);
}
