// The page's one way to the gateway: same-origin requests with the session cookies, JSON in and out.
//
// On a 401 the session is renewed once with the refresh cookie (POST /api/v1/auth/refresh) and the request sent
// again; when that fails too, the sign-in dialog opens over the page, which keeps what it shows, and the request
// is sent once more after the sign-in. A refresh token is single use (a reused one ends its whole family), so all
// the requests that meet a 401 together share one refresh, and one sign-in.

export class ApiError extends Error {
  constructor(status, code, message, param = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

const CSRF_COOKIE = "gw_csrf";
const SAFE = new Set(["GET", "HEAD"]);
// Their 401 means a wrong password or no session to renew or end: nothing a renewal would change.
const NOT_RENEWED = new Set(["/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/logout", "/api/v1/auth/signup"]);

let signInHandler = async () => {
  throw new ApiError(401, "invalid_credentials", "Signed out.");
};
let refreshing = null;
let signingIn = null;
// Sessions renewed (or signed into) so far: a request sent before the latest renewal that meets a 401 is only sent
// again, as another renewal would spend the new refresh token for nothing.
let renewals = 0;

/** `handler(reason)` returns a promise that settles once the user has signed in again (app.js's dialog). */
export function onSignInNeeded(handler) {
  signInHandler = handler;
}

/** One renewal of the session at a time, shared by every request that needs it. True when it worked. */
export function refreshSession() {
  refreshing ??= fetch("/api/v1/auth/refresh", { method: "POST", credentials: "same-origin", headers: csrf("POST") })
    .then((response) => {
      if (response.ok) renewals += 1;
      return response.ok;
    })
    .catch(() => false)
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

function signInAgain(reason) {
  signingIn ??= Promise.resolve(signInHandler(reason))
    .then(() => {
      renewals += 1;
    })
    .finally(() => {
      signingIn = null;
    });
  return signingIn;
}

function csrf(method) {
  if (SAFE.has(method)) return {};
  const cookie = document.cookie.split("; ").find((part) => part.startsWith(`${CSRF_COOKIE}=`));
  return cookie ? { "x-csrf-token": decodeURIComponent(cookie.slice(CSRF_COOKIE.length + 1)) } : {};
}

/**
 * `api(path, {method, json, body, headers, signal, onUploadProgress})`: the parsed JSON answer (null for an empty
 * one, the text for another type). Throws `ApiError` for an error answer, after the renewal and sign-in above.
 */
export async function api(path, options = {}) {
  const renewed = renewals;
  let response = await send(path, options);
  if (response.status === 401 && !NOT_RENEWED.has(path)) {
    if (renewals === renewed && !(await refreshSession())) {
      await signInAgain("Your session has ended. Sign in to carry on where you were.");
    }
    response = await send(path, options);
  }
  if (response.status >= 400) throw errorOf(response);
  return response.body;
}

async function send(path, { method, json, body, headers = {}, signal, onUploadProgress } = {}) {
  const verb = (method ?? (json !== undefined || body !== undefined ? "POST" : "GET")).toUpperCase();
  const sent = { accept: "application/json", ...csrf(verb), ...headers };
  let payload = body;
  if (json !== undefined) {
    payload = JSON.stringify(json);
    sent["content-type"] = "application/json";
  }
  if (onUploadProgress) return sendWithProgress(path, verb, sent, payload, signal, onUploadProgress);
  let response;
  try {
    response = await fetch(path, { method: verb, headers: sent, body: payload, signal, credentials: "same-origin" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network_error", "The gateway could not be reached.");
  }
  const text = await response.text();
  return { status: response.status, body: parse(text, response.headers.get("content-type")) };
}

/** XMLHttpRequest, for the upload progress that fetch does not report. */
function sendWithProgress(path, verb, headers, payload, signal, onUploadProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open(verb, path);
    request.withCredentials = true;
    for (const [name, value] of Object.entries(headers)) request.setRequestHeader(name, value);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onUploadProgress(event.loaded, event.total);
    });
    request.addEventListener("load", () =>
      resolve({ status: request.status, body: parse(request.responseText, request.getResponseHeader("content-type")) }),
    );
    request.addEventListener("error", () => reject(new ApiError(0, "network_error", "The gateway could not be reached.")));
    request.addEventListener("abort", () => reject(new DOMException("Aborted", "AbortError")));
    signal?.addEventListener("abort", () => request.abort());
    request.send(payload ?? null);
  });
}

function parse(text, contentType) {
  if (!text) return null;
  if ((contentType ?? "").includes("json")) {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

function errorOf(response) {
  const error = response.body && typeof response.body === "object" ? response.body.error : null;
  if (error && typeof error === "object") {
    return new ApiError(response.status, error.code ?? null, error.message ?? `HTTP ${response.status}`, error.param ?? null);
  }
  return new ApiError(response.status, null, typeof error === "string" ? error : `The gateway answered ${response.status}.`);
}
