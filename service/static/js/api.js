// The API as the page uses it: every request carries the key the user typed (X-API-Key),
// URLs are relative to the page so the gateway may sit behind a proxy prefix.

const KEY = "riir.apiKey";

export const apiKey = {
  get: () => localStorage.getItem(KEY) || "",
  set: (value) => (value ? localStorage.setItem(KEY, value) : localStorage.removeItem(KEY)),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// Job URLs from the API are root-relative ("/jobs/..", with the proxy prefix); ours are
// page-relative ("jobs"). Both resolve against the page.
export async function request(url, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey.get();
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(new URL(url, document.baseURI), { ...options, headers });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json(); // RFC 7807 problem details
      detail = body.detail || body.title || detail;
    } catch { /* not JSON: keep the status text */ }
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  return response;
}

export const getJson = async (url) => (await request(url)).json();
export const getBuffer = async (url) => (await request(url)).arrayBuffer();
