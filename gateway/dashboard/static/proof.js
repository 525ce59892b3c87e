// The proof view (#/proof/<leaf hash>): fetches the leaf's inclusion proof and the log's public key, and checks
// them here, in the reader's browser, with verify.js; every step is shown with its hashes, so the verdict rests on
// the math the reader can follow, not on the gateway's word.

import { h, fill } from "./dom.js";
import { verifyProof } from "./verify.js";

const HASH_TEXT = /^sha256:[0-9a-f]{64}$/;

const LABELS = {
  leaf: "Leaf hash",
  leafIndex: "Leaf index",
  publicKey: "Public key (base64)",
  sibling: "Sibling hash",
  side: "Sibling's side",
  result: "Hash so far",
  computed: "Computed root",
  expected: "Checkpoint's root",
  signed: "Signed text",
  signature: "Signature (base64)",
  treeSize: "Tree size",
};

export async function render(root, params, ctx) {
  const wanted = decodeURIComponent(params.hash ?? "").toLowerCase();
  const status = h("div", { class: "proof-verdict", role: "status", "aria-live": "polite" }, "Checking…");
  const steps = h("ol", { class: "proof-steps", "aria-label": "Verification steps" });
  const origin = h("p", { class: "muted" });
  fill(
    root,
    h("h1", {}, "Proof of inclusion"),
    h("p", {}, "Leaf ", h("code", { class: "hash" }, wanted)),
    h(
      "p",
      { class: "muted" },
      "This page fetches the leaf's inclusion proof and the log's public key, then checks them here in your " +
        "browser with Web Crypto (SHA-256 and Ed25519): the leaf, each step of the audit path, the root it " +
        "leads to, and the log's signature over the checkpoint. The gateway's own verdict is not used.",
    ),
    status,
    steps,
    origin,
  );

  if (!HASH_TEXT.test(wanted)) {
    showVerdict(status, false, "Not a leaf hash: expected sha256: and 64 hex digits.");
    return;
  }
  let answer;
  let published;
  try {
    [answer, published] = await Promise.all([
      ctx.api(`/verify/proof/${wanted}`),
      ctx.api("/v1/transparency/public-key"),
    ]);
  } catch (error) {
    const message = error.status === 404 ? "The log has no leaf with this hash." : `Cannot fetch the proof: ${error.message}`;
    showVerdict(status, false, message);
    return;
  }
  let result;
  try {
    result = await verifyProof(answer, published, wanted);
  } catch (error) {
    showVerdict(status, false, `The proof could not be checked: ${error.message}`);
    return;
  }
  const failed = result.steps.find((step) => step.ok !== true);
  showVerdict(
    status,
    result.verified,
    result.verified
      ? `Verified in your browser: leaf ${answer.leaf_index} of a tree of ${answer.tree_size} leaves signed by ${published.origin}.`
      : `Fails at “${failed.title}”: ${failed.detail}`,
  );
  fill(steps, result.steps.map(stepItem));
  fill(
    origin,
    `The gateway's own answer said verified: ${answer.verified} (not used here). `,
    "The key was fetched from this gateway; compare its id ",
    h("code", {}, published.key_id),
    " with one you obtained elsewhere to trust the log itself.",
  );
}

function showVerdict(element, ok, text) {
  element.className = `proof-verdict ${ok ? "is-ok" : "is-bad"}`;
  fill(element, h("strong", {}, ok ? "✓ Verified" : "✗ Not verified"), " — ", text);
}

function stepItem(step) {
  const mark = step.ok === true ? "✓ Passed" : step.ok === false ? "✗ Failed" : "– Not run";
  const state = step.ok === true ? "is-ok" : step.ok === false ? "is-bad" : "is-skipped";
  const badge = step.ok === true ? "ok" : step.ok === false ? "bad" : "off";
  const values = Object.entries(LABELS).filter(([name]) => step[name] !== undefined && step[name] !== null);
  return h(
    "li",
    { class: `proof-step ${state}`, "data-step": step.id },
    h("p", { class: "proof-step-head" }, h("strong", {}, step.title), " ", h("span", { class: `proof-mark badge ${badge}` }, mark)),
    h("p", {}, step.detail),
    values.length
      ? h(
          "dl",
          {},
          values.map(([name, label]) => [
            h("dt", {}, label),
            h("dd", {}, name === "signed" ? h("pre", {}, step[name]) : h("code", { class: "hash" }, String(step[name]))),
          ]),
        )
      : null,
  );
}
