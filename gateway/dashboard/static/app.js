// The shell: sign-in and sign-out, the hash router and the nav. Each view is a module loaded when first needed,
// exporting `render(root, params, ctx)` (it may return a cleanup function, called when the page leaves the view).

import { api, ApiError, onSignInNeeded } from "./api.js";

const ROUTES = [
  { pattern: /^#\/usage$/, module: "./usage.js", nav: "#/usage" },
  { pattern: /^#\/tokens$/, module: "./tokens.js", nav: "#/tokens" },
  { pattern: /^#\/agents$/, module: "./agents.js", nav: "#/agents" },
  { pattern: /^#\/agents\/([^/]+)$/, module: "./agents.js", nav: "#/agents", params: ([id]) => ({ id }) },
  { pattern: /^#\/proof\/([^/]+)$/, module: "./proof.js", nav: null, params: ([hash]) => ({ hash }) },
];
const HOME = "#/usage";
const TITLE = "Gateway dashboard";

const view = document.getElementById("view");
const dialog = document.getElementById("sign-in");
const form = document.getElementById("sign-in-form");
const ctx = { api, user: null, navigate, toast };
let cleanup = null;
let rendering = 0; // the latest navigation: an older one still loading must not draw over it

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

/** A short message in the live region (read out by screen readers), gone after a few seconds. */
function toast(message, kind = "info") {
  const item = document.createElement("p");
  item.className = `toast toast-${kind}`;
  item.textContent = message;
  document.getElementById("toasts").append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

async function route({ focus = true } = {}) {
  const hash = location.hash || HOME;
  const found = ROUTES.map((r) => ({ r, m: r.pattern.exec(hash) })).find(({ m }) => m);
  if (!found) {
    navigate(HOME);
    return;
  }
  const { r, m } = found;
  const serial = ++rendering;
  const params = r.params ? r.params(m.slice(1).map(decodeURIComponent)) : {};
  for (const link of document.querySelectorAll(".nav a")) {
    if (link.getAttribute("href") === r.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  await leave();
  view.replaceChildren();
  view.setAttribute("aria-busy", "true");
  try {
    const module = await import(r.module);
    if (serial !== rendering) return;
    const result = await module.render(view, params, ctx);
    if (serial !== rendering) {
      if (typeof result === "function") result();
      return;
    }
    cleanup = typeof result === "function" ? result : null;
    const heading = view.querySelector("h1");
    document.title = heading ? `${heading.textContent} · ${TITLE}` : TITLE;
    // Into the new view, unless the reader has already moved into it while it loaded.
    if (focus && !view.contains(document.activeElement)) view.focus();
  } catch (error) {
    if (serial !== rendering) return;
    const message = document.createElement("p");
    message.className = "error";
    message.setAttribute("role", "alert");
    message.textContent = error instanceof ApiError ? error.message : `This page could not be shown: ${error.message}`;
    view.append(message);
  } finally {
    if (serial === rendering) view.removeAttribute("aria-busy");
  }
}

async function leave() {
  const done = cleanup;
  cleanup = null;
  if (done) {
    try {
      await done();
    } catch (error) {
      console.error(error);
    }
  }
}

// ----- signing in and out -----

let pendingSignIn = null; // {resolve} while the dialog waits for a sign-in

/** Opens the sign-in dialog over the page (which stays as it is, behind it); settles once signed in. */
function askToSignIn(reason) {
  document.getElementById("sign-in-reason").textContent = reason;
  document.getElementById("sign-in-error").textContent = "";
  form.reset();
  if (!dialog.open) dialog.showModal();
  document.getElementById("sign-in-email").focus();
  return new Promise((resolve) => {
    pendingSignIn = { resolve };
  });
}

dialog.addEventListener("cancel", (event) => event.preventDefault()); // Escape does not leave it half signed in

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("sign-in-error");
  const email = document.getElementById("sign-in-email").value.trim();
  const password = document.getElementById("sign-in-password").value;
  if (!email || !password) {
    error.textContent = "Enter your email and your password.";
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  error.textContent = "";
  try {
    const response = await fetch("/api/v1/auth/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ email, password }),
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const retry = response.headers.get("retry-after");
      error.textContent =
        response.status === 401
          ? "That email and password do not match an account."
          : response.status === 429
            ? `Too many attempts. Try again in ${retry ?? "a few"} seconds.`
            : body?.error?.message ?? `Signing in failed (${response.status}).`;
      return;
    }
    const previous = ctx.user;
    signedIn(body.user);
    dialog.close();
    const waiting = pendingSignIn;
    pendingSignIn = null;
    waiting?.resolve(body.user);
    // Someone else signed in over the page: what it shows was not theirs to see.
    if (previous && previous.id !== body.user.id) route();
  } catch {
    error.textContent = "The gateway could not be reached.";
  } finally {
    button.disabled = false;
  }
});

function signedIn(user) {
  ctx.user = user;
  document.getElementById("who").textContent = `${user.email}${user.is_admin ? " (admin)" : ""}`;
  document.getElementById("account").hidden = false;
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await api("/api/v1/auth/logout", { method: "POST" });
  } catch {
    // Signed out here all the same: the cookies' session ends with its expiry.
  }
  await leave();
  ctx.user = null;
  view.replaceChildren();
  document.getElementById("account").hidden = true;
  toast("Signed out.");
  await askToSignIn("You have signed out. Sign in again to carry on.");
  route();
});

onSignInNeeded((reason) => askToSignIn(ctx.user ? reason : "Sign in with your gateway account."));

async function start() {
  // The session, renewed with the refresh cookie if need be, or after the sign-in dialog (api.js).
  const me = await api("/api/v1/auth/me");
  signedIn(me.user);
  window.addEventListener("hashchange", () => route());
  await route({ focus: false });
}

start();
