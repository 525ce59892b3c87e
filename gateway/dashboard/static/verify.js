// Checking a transparency-log proof in the browser, with nothing but Web Crypto: RFC 9162 hashing and inclusion
// proofs (gateway/transparency/verify.py), the C2SP checkpoint and its Ed25519 signed note
// (gateway/transparency/checkpoint.py, signer.py). Pure functions, no DOM: every check is returned as a step so
// the page can show the reader each hash, and where a tampered proof stops holding.

const HASH_SIZE = 32;
const KEY_ID_SIZE = 4;
const SIGNATURE_SIZE = 64;
const PUBLIC_KEY_SIZE = 32;
const ED25519 = 0x01;
const SIGNATURE_PREFIX = "\u2014 "; // an em dash and a space
const HASH_TEXT = /^sha256:([0-9a-f]{64})$/;
const DECIMAL = /^(0|[1-9][0-9]{0,19})$/;

export class VerifyError extends Error {}

const encoder = new TextEncoder();

function subtle() {
  if (!globalThis.crypto || !globalThis.crypto.subtle) {
    throw new VerifyError("Web Crypto is not available here: the page must be served over HTTPS or from localhost.");
  }
  return globalThis.crypto.subtle;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex) {
  if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new VerifyError("not hexadecimal");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Standard base64 in its one canonical spelling (as the gateway writes it), or a VerifyError. */
export function fromBase64(text) {
  let binary;
  try {
    binary = atob(text);
  } catch {
    throw new VerifyError("not base64");
  }
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (toBase64(bytes) !== text) throw new VerifyError("not canonical base64");
  return bytes;
}

export function toBase64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

/** `sha256:` and 64 lowercase hex digits, as the API writes a hash, to its 32 bytes. */
export function parseHash(text) {
  const match = typeof text === "string" ? HASH_TEXT.exec(text) : null;
  if (!match) throw new VerifyError(`expected sha256: and 64 lowercase hex digits, got ${JSON.stringify(text)}`);
  return fromHex(match[1]);
}

export function hashText(bytes) {
  return `sha256:${toHex(bytes)}`;
}

export function equalBytes(a, b) {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

export async function sha256(bytes) {
  return new Uint8Array(await subtle().digest("SHA-256", bytes));
}

/** RFC 9162 leaf hash: SHA-256(0x00 || leaf bytes). */
export async function leafHash(leaf) {
  return sha256(concat(Uint8Array.of(0x00), leaf));
}

/** RFC 9162 interior node: SHA-256(0x01 || left || right). */
export async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(0x01), left, right));
}

function count(value, name) {
  if (!Number.isSafeInteger(value) || value < 0) throw new VerifyError(`${name} is not a whole number`);
  return BigInt(value);
}

/**
 * The root an RFC 9162 inclusion proof leads to (section 2.1.3.2), each step returned:
 * `{steps: [{level, sibling, side, result}], root}`; `side` says where the sibling sits ("left" or "right").
 * Throws VerifyError when the path cannot be one for this index and size (too long, too short, bad hash).
 */
export async function inclusionSteps(index, size, leaf, path) {
  const n = count(size, "tree_size");
  let fn = count(index, "leaf_index");
  if (fn >= n) throw new VerifyError(`leaf index ${index} is not within a tree of ${size} leaves`);
  let sn = n - 1n;
  let r = leaf;
  const steps = [];
  for (const [level, sibling] of path.entries()) {
    if (sn === 0n) throw new VerifyError(`the audit path is too long for index ${index} and size ${size}`);
    let side;
    if (fn & 1n || fn === sn) {
      side = "left";
      r = await nodeHash(sibling, r);
      while (fn && !(fn & 1n)) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      side = "right";
      r = await nodeHash(r, sibling);
    }
    fn >>= 1n;
    sn >>= 1n;
    steps.push({ level, sibling, side, result: r });
  }
  if (sn !== 0n) throw new VerifyError(`the audit path is too short for index ${index} and size ${size}`);
  return { steps, root: r };
}

/** A signed note's text (what is signed, its final newline included) and its signature lines. */
export function parseNote(note) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0 || !note.endsWith("\n")) {
    throw new VerifyError("a signed note is its text, a blank line and signature lines");
  }
  const text = note.slice(0, split + 1);
  const signatures = note
    .slice(split + 2, -1)
    .split("\n")
    .map((line) => {
      const words = line.slice(SIGNATURE_PREFIX.length).split(" ");
      if (!line.startsWith(SIGNATURE_PREFIX) || words.length !== 2) {
        throw new VerifyError(`malformed signature line ${JSON.stringify(line)}`);
      }
      const raw = fromBase64(words[1]);
      if (raw.length !== KEY_ID_SIZE + SIGNATURE_SIZE) throw new VerifyError("malformed signature");
      return { name: words[0], keyId: raw.slice(0, KEY_ID_SIZE), signature: raw.slice(KEY_ID_SIZE) };
    });
  return { text, signatures };
}

/** The checkpoint in a note's text: `{origin, treeSize, rootHash}` (c2sp.org/tlog-checkpoint). */
export function parseCheckpoint(text) {
  if (!text.endsWith("\n")) throw new VerifyError("a checkpoint ends with a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw new VerifyError("a checkpoint has an origin, a size and a root hash line");
  const [origin, size, root] = lines;
  if (!origin || /[\s+]/.test(origin)) throw new VerifyError("the origin line is empty or has spaces");
  if (!DECIMAL.test(size)) throw new VerifyError("the size line is not a decimal number");
  const rootHash = fromBase64(root);
  if (rootHash.length !== HASH_SIZE) throw new VerifyError(`the root hash is not ${HASH_SIZE} bytes`);
  return { origin, treeSize: Number(size), rootHash };
}

/** The signed-note key id: the first 4 bytes of SHA-256(name || "\n" || 0x01 || public key). */
export async function keyId(name, publicKey) {
  const digest = await sha256(concat(encoder.encode(name + "\n"), Uint8Array.of(ED25519), publicKey));
  return digest.slice(0, KEY_ID_SIZE);
}

/** Whether `signature` is `publicKey`'s Ed25519 signature of `message` (Web Crypto). */
export async function ed25519Verify(publicKey, signature, message) {
  const key = await subtle().importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  return subtle().verify({ name: "Ed25519" }, key, signature, message);
}

/** The published key (`GET /v1/transparency/public-key`) as `{origin, publicKey, keyId}`, its id recomputed. */
export async function readPublicKey(published) {
  const publicKey = fromBase64(published.public_key);
  if (publicKey.length !== PUBLIC_KEY_SIZE) throw new VerifyError(`an Ed25519 public key is ${PUBLIC_KEY_SIZE} bytes`);
  const id = await keyId(published.origin, publicKey);
  if (toHex(id) !== published.key_id) throw new VerifyError("the key id does not match the origin and the key");
  return { origin: published.origin, publicKey, keyId: id };
}

/**
 * Checks a `GET /verify/proof/{hash}` answer with the published key, and that it is the proof of `wanted` (the hash
 * the reader asked about). Returns `{verified, steps}`; each step is `{id, title, ok, detail, ...values}`, in this
 * order: the leaf, the key, each audit-path step, the root, the signature, the checkpoint's tree. `ok` is null for a
 * step that could not be run because an earlier one found the input malformed. The proof holds only when every
 * step is ok: the server's own `verified` field is never read.
 */
export async function verifyProof(answer, published, wanted) {
  const steps = [];
  const add = (step) => (steps.push(step), step.ok);

  let leaf = null;
  try {
    leaf = parseHash(answer.hash);
    const asked = parseHash(wanted);
    add({
      id: "leaf",
      title: "Leaf hash",
      ok: equalBytes(leaf, asked),
      detail: equalBytes(leaf, asked)
        ? "The proof is for the leaf asked about."
        : `The proof is for another leaf than ${wanted}.`,
      leaf: answer.hash,
      leafIndex: answer.leaf_index,
    });
  } catch (error) {
    add({ id: "leaf", title: "Leaf hash", ok: false, detail: error.message });
  }

  let key = null;
  try {
    key = await readPublicKey(published);
    add({
      id: "key",
      title: "Log key",
      ok: true,
      detail: `Ed25519 key of ${key.origin}, id ${toHex(key.keyId)} (computed here from the origin and the key).`,
      publicKey: published.public_key,
    });
  } catch (error) {
    add({ id: "key", title: "Log key", ok: false, detail: error.message });
  }

  let computed = null;
  let path = null;
  try {
    if (!Array.isArray(answer.audit_path)) throw new VerifyError("audit_path is not a list");
    path = answer.audit_path.map(parseHash);
  } catch (error) {
    add({ id: "path", title: "Audit path", ok: false, detail: error.message });
  }
  if (leaf && path) {
    try {
      const { steps: walked, root } = await inclusionSteps(answer.leaf_index, answer.tree_size, leaf, path);
      for (const step of walked) {
        add({
          id: `path-${step.level}`,
          title: `Audit path step ${step.level + 1} of ${walked.length}`,
          ok: true,
          detail:
            step.side === "left"
              ? "SHA-256(0x01 || sibling || hash so far)"
              : "SHA-256(0x01 || hash so far || sibling)",
          sibling: hashText(step.sibling),
          side: step.side,
          result: hashText(step.result),
        });
      }
      computed = root;
    } catch (error) {
      add({ id: "path", title: "Audit path", ok: false, detail: error.message });
    }
  }

  let note = null;
  let checkpoint = null;
  try {
    note = parseNote(String(answer.checkpoint ?? ""));
    checkpoint = parseCheckpoint(note.text);
  } catch (error) {
    add({ id: "note", title: "Checkpoint note", ok: false, detail: error.message });
  }

  if (checkpoint) {
    const ok = computed !== null && equalBytes(computed, checkpoint.rootHash);
    add({
      id: "root",
      title: "Computed root vs the checkpoint's root",
      ok: computed === null ? null : ok,
      detail:
        computed === null
          ? "No root was computed: the audit path did not run."
          : ok
            ? "The audit path leads from the leaf to the signed root."
            : "The audit path leads to another root than the one the checkpoint signs.",
      computed: computed && hashText(computed),
      expected: hashText(checkpoint.rootHash),
    });
  }

  if (note && key) {
    const mine = note.signatures.filter((s) => s.name === key.origin && equalBytes(s.keyId, key.keyId));
    let ok = false;
    let detail = `The note has no signature by ${key.origin} with key id ${toHex(key.keyId)}.`;
    if (mine.length) {
      try {
        ok = await ed25519Verify(key.publicKey, mine[0].signature, encoder.encode(note.text));
        detail = ok
          ? "Ed25519 signature over the checkpoint text verified with the log's key."
          : "The Ed25519 signature does not verify: the checkpoint text or the signature was changed.";
      } catch (error) {
        detail = `The signature could not be checked: ${error.message}`;
      }
    }
    add({
      id: "signature",
      title: "Signature over the checkpoint note",
      ok,
      detail,
      signed: note.text,
      signature: mine.length ? toBase64(mine[0].signature) : null,
    });
  } else {
    add({
      id: "signature",
      title: "Signature over the checkpoint note",
      ok: null,
      detail: "Not checked: the note or the key is unreadable.",
    });
  }

  if (checkpoint) {
    const problems = [];
    if (key && checkpoint.origin !== key.origin) problems.push(`its origin ${checkpoint.origin} is not the key's`);
    if (checkpoint.treeSize !== answer.tree_size) {
      problems.push(`it is for ${checkpoint.treeSize} leaves, the proof for ${answer.tree_size}`);
    }
    let claimed = null;
    try {
      claimed = parseHash(answer.root_hash);
    } catch {
      problems.push("the proof's root_hash is malformed");
    }
    if (claimed && !equalBytes(claimed, checkpoint.rootHash)) problems.push("its root is not the proof's root_hash");
    add({
      id: "tree",
      title: "Checkpoint names the proof's tree",
      ok: problems.length === 0,
      detail: problems.length
        ? `The checkpoint does not match the proof: ${problems.join("; ")}.`
        : `${checkpoint.origin}, a tree of ${checkpoint.treeSize} leaves.`,
      treeSize: checkpoint.treeSize,
    });
  }

  return { verified: steps.every((step) => step.ok === true), steps };
}
