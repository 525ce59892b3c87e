// An agent's assets on its page: the vault of BYOK keys (prefixes only), its files (upload with progress,
// download, delete) and its quota as bars with their numbers.

import { h, fill, uid, bytes, when } from "./dom.js";

function labelled(label, control) {
  control.id ||= uid("field");
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control);
}

function panel(title, ...children) {
  const id = uid("panel");
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

function failure(ctx, what) {
  return (error) => ctx.toast?.(`${what}: ${error.message}`, "error");
}

/** A list item: what it is, and its Delete button, named after it for screen readers. */
function deletable(attributes, label, onDelete, ...description) {
  return h(
    "li",
    attributes,
    h("span", {}, ...description),
    h("button", { type: "button", class: "danger", "aria-label": label, onclick: onDelete }, "Delete"),
  );
}

/** A function that fills `list` with `item(record)` for each record at `path`, or says `empty`. */
function lister(ctx, list, path, item, empty) {
  return async () => {
    const { data } = await ctx.api(path);
    fill(list, data.length ? data.map(item) : h("li", { class: "muted" }, empty));
  };
}

/** DELETE `path`, say so and `reload()`; or say why not. */
async function deleteThen(ctx, path, { done, failed, reload }) {
  try {
    await ctx.api(path, { method: "DELETE" });
    ctx.toast?.(done);
    await reload();
  } catch (error) {
    failure(ctx, failed)(error);
  }
}

export function vaultPanel(agent, ctx) {
  const base = `/v1/agents/${agent.id}/vault`;
  const list = h("ul", { class: "item-list", "aria-label": "Stored keys" });
  const provider = h("input", { name: "provider", required: true, maxlength: 100, autocomplete: "off", value: agent.model_provider });
  const key = h("input", { name: "api_key", type: "password", required: true, autocomplete: "off", spellcheck: false });
  const form = h(
    "form",
    {
      class: "form-grid",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const stored = await ctx.api(base, { method: "POST", json: { provider: provider.value.trim(), api_key: key.value } });
          key.value = "";
          ctx.toast?.(`Key for ${stored.provider} stored (${stored.prefix}…).`);
          await load();
        } catch (error) {
          failure(ctx, "Cannot store the key")(error);
        }
      },
    },
    labelled("Provider", provider),
    labelled("API key", key),
    h("div", { class: "row" }, h("button", { type: "submit" }, "Store key")),
  );

  function remove(name) {
    return deleteThen(ctx, `${base}?provider=${encodeURIComponent(name)}`, {
      done: `Key for ${name} deleted.`,
      failed: "Cannot delete the key",
      reload: load,
    });
  }

  const load = lister(
    ctx,
    list,
    base,
    (item) =>
      deletable(
        { "data-provider": item.provider },
        `Delete the ${item.provider} key`,
        () => remove(item.provider),
        h("strong", {}, item.provider),
        " ",
        h("code", {}, `${item.prefix}…`),
        h("small", { class: "muted" }, ` stored ${when(item.created_at)}`),
      ),
    "No keys stored: the platform's key is used.",
  );

  load().catch(failure(ctx, "Cannot list the vault"));
  return {
    element: panel(
      "Vault",
      h("p", { class: "muted" }, "Your own provider keys (BYOK), encrypted at rest; only their prefixes are shown."),
      list,
      form,
    ),
  };
}

export function filesPanel(agent, ctx, changed) {
  const base = `/v1/agents/${agent.id}/files`;
  const list = h("ul", { class: "item-list", "aria-label": "Uploaded files" });
  const chooser = h("input", { type: "file", name: "file", required: true });
  const progressId = uid("progress");
  const bar = h("progress", { id: progressId, max: 100, value: 0 });
  const barText = h("span", { class: "progress-text" }, "");
  const progress = h("div", { class: "upload-progress", hidden: true }, h("label", { for: progressId }, "Upload progress"), bar, barText);
  const submit = h("button", { type: "submit" }, "Upload");
  const form = h(
    "form",
    { class: "form-grid", onsubmit: upload },
    labelled("File to upload", chooser),
    h("div", { class: "row" }, submit),
    progress,
  );

  function showProgress(loaded, total) {
    const percent = total ? Math.round((loaded / total) * 100) : 0;
    bar.value = percent;
    barText.textContent = `${percent}% (${bytes(loaded)} of ${bytes(total)})`;
  }

  async function upload(event) {
    event.preventDefault();
    const file = chooser.files[0];
    if (!file) return;
    const body = new FormData();
    body.append("file", file, file.name);
    progress.hidden = false;
    submit.disabled = true;
    showProgress(0, file.size);
    try {
      const record = await ctx.api(base, {
        method: "POST",
        body,
        onUploadProgress: (loaded, total) => showProgress(loaded, total),
      });
      showProgress(file.size, file.size);
      ctx.toast?.(`${record.filename} uploaded (${bytes(record.size)}).`);
      chooser.value = "";
      await load();
      changed?.();
    } catch (error) {
      barText.textContent = "Failed.";
      failure(ctx, "Cannot upload the file")(error);
    } finally {
      submit.disabled = false;
    }
  }

  function remove(record) {
    return deleteThen(ctx, `${base}/${record.id}`, {
      done: `${record.filename} deleted.`,
      failed: "Cannot delete the file",
      reload: async () => (await load(), changed?.()),
    });
  }

  const load = lister(
    ctx,
    list,
    base,
    (record) =>
      deletable(
        { "data-file-id": record.id },
        `Delete ${record.filename}`,
        () => remove(record),
        h("a", { href: `${base}/${record.id}`, download: record.filename }, record.filename),
        h("small", { class: "muted" }, ` ${bytes(record.size)} · ${record.content_type} · ${when(record.created_at)}`),
      ),
    "No files.",
  );

  load().catch(failure(ctx, "Cannot list the files"));
  return { element: panel("Files", list, form) };
}

const QUOTA_NAMES = {
  messages_per_day: ["Messages today", String],
  tokens_per_month: ["Tokens this month", (n) => n.toLocaleString()],
  storage_bytes: ["Storage", bytes],
  files: ["Files", String],
};

export function quotaPanel(agent, ctx) {
  const body = h("div", { class: "quota" }, h("p", { class: "muted" }, "Loading…"));

  function bar(name, limit, used, remaining) {
    const [label, format] = QUOTA_NAMES[name] ?? [name, String];
    const id = uid("quota");
    const text =
      limit === null || limit === undefined
        ? `${format(used)} used (no limit)`
        : `${format(used)} of ${format(limit)} used, ${format(remaining)} left`;
    const share = limit ? Math.min(1, used / limit) : 0;
    return h(
      "div",
      { class: "quota-row", "data-quota": name },
      limit === null || limit === undefined
        ? h("span", { class: "quota-label" }, label)
        : h("label", { for: id }, label),
      limit === null || limit === undefined
        ? null
        : h("meter", { id, min: 0, max: limit || 1, value: Math.min(used, limit || 1), low: 0.7 * limit, high: 0.9 * limit, optimum: 0 }),
      h("span", { class: `quota-text${share >= 1 ? " is-bad" : ""}` }, text, share >= 1 ? " (exhausted)" : ""),
    );
  }

  async function refresh() {
    try {
      const quota = await ctx.api(`/v1/agents/${agent.id}/quota`);
      fill(
        body,
        h("p", {}, `Tier ${quota.tier}; this month runs to ${when(quota.period.end)}.`),
        Object.keys(quota.limits).map((name) => bar(name, quota.limits[name], quota.used[name], quota.remaining[name])),
      );
    } catch (error) {
      fill(body, h("p", { role: "alert" }, `Cannot read the quota: ${error.message}`));
    }
  }

  refresh();
  return { element: panel("Quota", body), refresh };
}
