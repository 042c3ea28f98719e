// dreamsearch web UI: a plain ES module, no build step, works offline.
// All server data reaches the DOM through textContent and attributes, never innerHTML,
// because file paths can contain any characters.

const $ = (selector, root = document) => root.querySelector(selector);
const TOKEN_KEY = "dreamsearch.token";
const numbers = new Intl.NumberFormat();
let health = null;

/* ---------- helpers ---------- */

// el("div", {class: "x", text: "y", onclick: fn, title: "..."}, ...children): strings become text nodes.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child != null));
  return node;
}

const baseName = (path) => String(path).split(/[\\/]/).filter(Boolean).pop() || String(path);
const distance = (d) => (d == null ? "" : Number(d).toFixed(4));
const plural = (n, one, many) => `${numbers.format(n)} ${n === 1 ? one : many}`;
const intValue = (input, fallback) => Math.max(1, parseInt(input.value, 10) || fallback);

function humanBytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

function checkedValues(fieldset) {
  return [...fieldset.querySelectorAll("input:checked")].map((box) => box.value);
}

// Marks a region as loading (CSS shows a thin animated bar) for the duration of `work`.
async function busy(region, work) {
  region.setAttribute("aria-busy", "true");
  try { return await work(); } finally { region.removeAttribute("aria-busy"); }
}

/* ---------- errors ---------- */

function showError(message) {
  $("#error-text").textContent = message;
  $("#error").hidden = false;
}
const hideError = () => { $("#error").hidden = true; };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// FastAPI answers {"detail": "text"}, or {"detail": [{loc, msg}, ...]} for bad parameters.
async function errorText(response) {
  const text = await response.text();
  try {
    const { detail } = JSON.parse(text);
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => [d.loc?.slice(1).join("."), d.msg].filter(Boolean).join(": ")).join("; ");
    }
    if (detail != null) return JSON.stringify(detail);
  } catch { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`;
}

/* ---------- token and API calls ---------- */

const getToken = () => sessionStorage.getItem(TOKEN_KEY);
let tokenWait = null; // one prompt shared by every call that got 401 at the same time

function askToken(refused) {
  if (!tokenWait) {
    let settle;
    const promise = new Promise((resolve, reject) => { settle = { resolve, reject }; });
    tokenWait = { ...settle, promise };
    $("#token-note").textContent = refused
      ? "That token was refused. Enter the server's access token."
      : "This server needs an access token (it was started with --token).";
    $("#token-input").value = "";
    $("#token-dialog").showModal();
  }
  return tokenWait.promise;
}

function setupTokenDialog() {
  const dialog = $("#token-dialog");
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    const wait = tokenWait;
    tokenWait = null;
    dialog.close();
    wait?.resolve();
  });
  $("#token-cancel").addEventListener("click", () => dialog.close());
  // Closing without a token (Cancel, Escape) fails the waiting calls, with a visible error.
  dialog.addEventListener("close", () => {
    const wait = tokenWait;
    tokenWait = null;
    wait?.reject(new ApiError(401, "This server needs an access token."));
  });
}

// fetch with the bearer token; on 401 asks for a token and tries again.
async function request(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers);
    const token = getToken();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch {
      throw new ApiError(0, `Cannot reach the server (${path.split("?")[0]}).`);
    }
    if (response.status !== 401) return response;
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken(Boolean(token));
  }
}

async function api(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw new ApiError(response.status, await errorText(response));
  return response.json();
}

const postJson = (path, body) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

/* ---------- images ---------- */

// <img src> cannot send the Authorization header: with a token, fetch the bytes and show a
// blob URL instead. Without one, a plain src lets the browser cache and lazy-load.
function setImage(img, url) {
  const broken = () => img.parentElement?.classList.add("broken");
  img.addEventListener("error", broken, { once: true });
  if (!getToken()) { img.src = url; return; }
  request(url)
    .then((response) => (response.ok ? response.blob() : Promise.reject()))
    .then((blob) => {
      const src = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(src), { once: true });
      img.src = src;
    })
    .catch(broken);
}

async function openOriginal(id) {
  const url = `/api/files/${id}/original`;
  if (!getToken()) { window.open(url, "_blank", "noopener"); return; }
  const tab = window.open("", "_blank"); // opened now, before the await, so it isn't blocked
  try {
    const response = await request(url);
    if (!response.ok) throw new Error(await errorText(response));
    tab.location = URL.createObjectURL(await response.blob());
  } catch (error) {
    tab?.close();
    showError(error.message);
  }
}

function thumb(file, label, onclick) {
  const img = el("img", { alt: baseName(file.path), loading: "lazy", decoding: "async" });
  setImage(img, file.thumbnail);
  return el(onclick ? "button" : "div", { class: "thumb", type: onclick ? "button" : null, title: label, onclick }, img);
}

/* ---------- search ---------- */

const search = { seq: 0, query: null, next: null, previewUrl: null, k: 0, model: "" };

function tile(result) {
  const name = baseName(result.path);
  // a text result's "more like this" is by look: the library's DreamSim model, not CLIP
  const more = () => moreLike(result, search.query?.kind === "text" ? lookModel() : undefined);
  const copies = result.also_at?.length
    ? el("span", { class: "copies", title: result.also_at.join("\n"), text: `+${result.also_at.length} ${result.also_at.length === 1 ? "copy" : "copies"}` })
    : null;
  return el("article", { class: "tile" },
    thumb(result, `More like ${name}`, more),
    el("div", { class: "meta" },
      el("span", { class: "dist", title: "distance (smaller is more alike)", text: distance(result.distance) }),
      copies),
    el("div", { class: "name", title: result.path, text: name }),
    el("div", { class: "actions" },
      el("button", { type: "button", class: "more link", text: "More like this", onclick: more }),
      el("button", { type: "button", class: "open link", title: "Open the original", text: "Open ↗",
        onclick: () => openOriginal(result.id) })));
}

function lookModel() {
  const indexed = Object.keys(health?.vectors || {});
  const dreamsim = indexed.filter((name) => name.startsWith("dreamsim"));
  return dreamsim.includes(health?.default_model) ? health.default_model : dreamsim[0];
}

function moreLike(file, model) {
  if (model) $("#model").value = model;
  if (location.hash !== "#search") location.hash = "#search";
  runSearch({ kind: "similar", id: file.id, name: baseName(file.path), thumbnail: file.thumbnail });
  window.scrollTo({ top: 0, behavior: "smooth" });
}

async function runSearch(query, offset = 0) {
  const seq = ++search.seq;
  search.query = query;
  const k = intValue($("#k"), 25);
  const model = $("#model").value;
  Object.assign(search, { k, model });
  if (offset === 0) showQuery(query);
  let page;
  try {
    page = await busy($("#view-search"), () => {
      if (query.kind === "similar") {
        const params = new URLSearchParams({ k, offset });
        if (model) params.set("model", model);
        return api(`/api/files/${query.id}/similar?${params}`);
      }
      if (query.kind === "text") return postJson("/api/search/text", { text: query.text, k, offset }); // clip
      const form = new FormData();
      form.append("image", query.file, query.file.name || "pasted.png");
      form.append("k", k);
      form.append("offset", offset);
      if (model) form.append("model", model);
      const maxDistance = $("#max-distance").value.trim();
      const under = $("#under").value.trim();
      if (maxDistance) form.append("max_distance", maxDistance);
      if (under) form.append("under", under);
      return api("/api/search", { method: "POST", body: form });
    });
  } catch (error) {
    if (seq !== search.seq) return;
    showError(error.message);
    $("#search-sub").textContent = "Search failed.";
    if (offset === 0) { $("#results").replaceChildren(); $("#load-more").hidden = true; } // no stale results
    return;
  }
  if (seq !== search.seq) return; // a newer search started meanwhile: drop this answer
  const grid = $("#results");
  if (offset === 0) grid.replaceChildren();
  grid.append(...page.results.map(tile));
  search.next = page.next_offset ?? null;
  $("#load-more").hidden = search.next == null;
  $("#search-empty").hidden = grid.children.length > 0;
  $("#search-sub").textContent = [`${plural(grid.children.length, "result", "results")} · ${page.model}`, page.notice]
    .filter(Boolean).join(" · ");
}

function showQuery(query) {
  $("#search-head").hidden = false;
  $("#search-title").textContent = query.kind === "similar" ? `More like ${query.name}`
    : query.kind === "text" ? `Results for “${query.text}”` : `Results for ${query.file.name || "pasted picture"}`;
  $("#search-sub").textContent = "Searching…";
  const preview = $("#query-preview");
  preview.parentElement.classList.remove("broken");
  if (search.previewUrl) URL.revokeObjectURL(search.previewUrl);
  search.previewUrl = null;
  preview.parentElement.hidden = query.kind === "text"; // words have no picture
  if (query.kind === "text") {
    preview.removeAttribute("src");
  } else if (query.kind === "upload") {
    preview.src = search.previewUrl = URL.createObjectURL(query.file);
  } else {
    preview.removeAttribute("src");
    setImage(preview, query.thumbnail || `/api/files/${query.id}/thumbnail`);
  }
}

/* ---------- upload inputs: picker, drop zone, paste ---------- */

function dropZone(zone, onFile) {
  const input = $("input[type=file]", zone);
  const take = (file) => {
    const chosen = $(".chosen", zone);
    if (chosen) chosen.textContent = file.name || "pasted picture";
    onFile(file);
  };
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = ""; // so choosing the same file again still fires "change"
    if (file) take(file);
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) take(file); else showError("Drop an image file (not a link or text).");
  });
  return take;
}

/* ---------- compare ---------- */

let compareFile = null;

async function runCompare() {
  if (!compareFile) { showError("Choose a picture to compare."); return; }
  const form = new FormData();
  form.append("image", compareFile, compareFile.name || "pasted.png");
  const models = checkedValues($("#compare-models"));
  if (models.length) form.append("models", models.join(","));
  form.append("k", intValue($("#compare-k"), 10));
  try {
    const data = await busy($("#view-compare"), () => api("/api/compare", { method: "POST", body: form }));
    renderCompare(data);
  } catch (error) {
    $("#compare-cols").replaceChildren(); // no stale columns under a new error
    $("#compare-agreement").replaceChildren();
    showError(error.message);
  }
}

function renderCompare(data) {
  $("#compare-cols").replaceChildren(...Object.entries(data.models).map(([model, results]) =>
    el("div", { class: "col" },
      el("h3", { text: model }),
      el("ol", { class: "rows" }, ...results.map((r) => {
        const name = baseName(r.path);
        return el("li", {},
          thumb(r, `More like ${name} (${model})`, () => moreLike(r, model)),
          el("span", { class: "dist", text: distance(r.distance) }),
          el("span", { class: "name", title: r.path, text: name }));
      })))));
  const rows = (data.overlap || []).map((o) => el("tr", {},
    el("td", { text: o.models.join(" vs ") }),
    el("td", { class: "num", text: `${o.common} / ${data.k}` }),
    el("td", { class: "num", text: Number(o.jaccard).toFixed(2) }),
    el("td", { class: "num", text: o.rank_correlation == null ? "—" : Number(o.rank_correlation).toFixed(2) })));
  $("#compare-agreement").replaceChildren(rows.length ? el("div", { class: "card" },
    el("h3", { text: "Agreement" }),
    table(["Models", "#Common", "#Jaccard", "#Rank correlation"], rows)) : "");
}

// headings: strings; a heading starting with "#" is a numeric column, aligned right.
function table(headings, rows) {
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { class: h.startsWith("#") ? "num" : null, text: h.replace(/^#/, "") })))),
    el("tbody", {}, ...rows)));
}

/* ---------- duplicates ---------- */

let duplicatesLoaded = false;

async function loadDuplicates() {
  duplicatesLoaded = true;
  const params = new URLSearchParams();
  if ($("#dup-model").value) params.set("model", $("#dup-model").value);
  if ($("#dup-distance").value.trim()) params.set("max_distance", $("#dup-distance").value.trim());
  $("#dup-summary").textContent = "Looking for duplicates…";
  try {
    const data = await busy($("#view-duplicates"), () => api(`/api/duplicates?${params}`));
    renderDuplicates(data);
  } catch (error) {
    duplicatesLoaded = false;
    $("#dup-summary").textContent = "";
    showError(error.message);
  }
}

function renderDuplicates(data) {
  const groups = data.groups || [];
  // The server counts each file once (a content's copies are listed in its identical group only).
  const { removable_files: spare, removable_bytes: freed } = data.summary;
  $("#dup-summary").textContent = groups.length
    ? `${plural(groups.length, "group", "groups")} · ${plural(spare, "file", "files")} could go, ${humanBytes(freed)} · ${data.model}, max distance ${data.max_distance}`
    : `No duplicates found (${data.model}, max distance ${data.max_distance}).`;
  $("#dup-distance").placeholder = String(data.max_distance);
  $("#dup-groups").replaceChildren(...groups.map((g) => (g.kind === "identical" ? identicalCard(g) : similarCard(g))));
}

const pixels = (f) => (f.width && f.height ? `${f.width}×${f.height}` : "");

function identicalCard(group) {
  const files = [group.keeper, ...group.others];
  return el("article", { class: "card group identical" },
    el("header", {}, el("strong", { text: "identical" }), el("span", { class: "muted", text: ` ×${files.length} identical · ${pixels(group.keeper)} · ${humanBytes(group.keeper.size)}` })),
    el("div", { class: "identical-body" },
      thumb(group.keeper, "Open the original", () => openOriginal(group.keeper.id)),
      el("ul", { class: "paths" }, ...files.map((f, i) => el("li", { class: i === 0 ? "keeper" : null },
        i === 0 ? el("span", { class: "badge", text: "keep" }) : null,
        el("span", { class: "path", title: f.path, text: f.path }))))));
}

function similarCard(group) {
  const figure = (f, keeper) => el("figure", { class: keeper ? "keeper" : null },
    thumb(f, "Open the original", () => openOriginal(f.id)),
    el("figcaption", {},
      keeper ? el("span", { class: "badge", text: "keep" }) : el("span", { class: "dist", text: distance(f.distance) }),
      el("span", { class: "name", title: f.path, text: baseName(f.path) }),
      el("span", { class: "muted", text: [pixels(f), humanBytes(f.size)].filter(Boolean).join(" · ") })));
  return el("article", { class: "card group similar" },
    el("header", {}, el("strong", { text: "similar" }), el("span", { class: "muted", text: ` · ${plural(group.others.length + 1, "picture", "pictures")}` })),
    el("div", { class: "figures" }, figure(group.keeper, true), ...group.others.map((f) => figure(f, false))));
}

/* ---------- status ---------- */

async function loadStatus() {
  const failed = $("#show-failed").checked;
  try {
    const data = await busy($("#view-status"), () => api(`/api/status?failed=${failed}`));
    renderStatus(data, failed);
  } catch (error) {
    showError(error.message);
  }
}

function renderStatus(data, showFailed) {
  const parts = [
    el("div", { class: "card" }, el("dl", { class: "facts" },
      el("dt", { text: "Library" }), el("dd", { class: "path", title: data.library, text: data.library }),
      el("dt", { text: "Size" }), el("dd", { text: humanBytes(data.size_bytes) }))),
    el("h3", { text: "Folders" }),
    data.folders.length ? table(["Folder", "#Images", "#Unreadable"], data.folders.map((f) => el("tr", {},
      el("td", {}, el("span", { class: "path", title: f.path, text: f.path }),
        f.missing ? el("span", { class: "badge warn", title: "this folder is not on disk now", text: "missing" }) : null),
      el("td", { class: "num", text: numbers.format(f.images) }),
      el("td", { class: "num", text: numbers.format(f.unreadable) }))))
      : el("p", { class: "muted", text: "No folders indexed yet: see the Index tab." }),
    el("h3", { text: "Models" }),
    data.models.length ? table(["Model", "#Vectors", "#Dim", "Index"], data.models.map((m) => el("tr", {},
      el("td", { text: m.name }),
      el("td", { class: "num", text: numbers.format(m.vectors) }),
      el("td", { class: "num", text: m.dim ?? "" }),
      el("td", { class: "muted", text: m.index ?? "" }))))
      : el("p", { class: "muted", text: "No vectors yet." }),
  ];
  if (showFailed) {
    const failed = data.failed || [];
    parts.push(el("h3", { text: `Unreadable files (${numbers.format(failed.length)})` }),
      failed.length ? table(["File", "Reason", "Retried"], failed.map((f) => el("tr", {},
        el("td", { class: "path", title: f.path, text: f.path }), el("td", { text: f.reason }),
        el("td", { class: "muted", text: f.retry ?? "" }))))
        : el("p", { class: "muted", text: "None." }));
  }
  const watching = data.watch_warnings || []; // from every watcher of the library, this server's or a CLI's
  if (watching.length) parts.unshift(el("div", { class: "watch-warnings" }, watching.join("\n")));
  $("#status-body").replaceChildren(...parts);
}

/* ---------- index jobs ---------- */

let stopFollowing = null;
let followedJob = null;
let stoppingJob = null; // the job whose Stop was pressed: "Stopping…" until it ends

async function startIndex(event) {
  event.preventDefault();
  const folders = $("#index-folders").value.split("\n").map((line) => line.trim()).filter(Boolean);
  const models = checkedValues($("#index-models"));
  if (!folders.length) { showError("Enter at least one folder."); return; }
  if (!models.length) { showError("Choose at least one model."); return; }
  try {
    const { job } = await busy($("#view-index"), () => postJson("/api/index", { folders, models }));
    followJob(job);
  } catch (error) {
    if (error.status !== 409) { showError(error.message); return; }
    showError(`Another index job is running (${error.message}).`);
    await refreshHealth(); // follows the running job, if the server names it
  }
}

function followJob(id) {
  if (followedJob === id) return;
  stopFollowing?.();
  followedJob = id;
  $("#job").hidden = false;
  $("#index-start").disabled = true;
  // EventSource cannot send the Authorization header: with a token, poll instead.
  if (getToken() || !("EventSource" in window)) { pollJob(id); return; }
  const source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
  let last = null;
  source.onmessage = (event) => {
    last = JSON.parse(event.data);
    renderJob(last);
    if (last.state !== "running") { source.close(); jobEnded(); }
  };
  source.onerror = () => { // the stream broke before a final state: poll for the rest
    source.close();
    if (!last || last.state === "running") pollJob(id);
  };
  stopFollowing = () => source.close();
}

function pollJob(id) {
  let stopped = false;
  let timer = null;
  stopFollowing = () => { stopped = true; clearTimeout(timer); };
  const tick = async () => {
    try {
      const job = await api(`/api/jobs/${encodeURIComponent(id)}`);
      if (stopped) return;
      renderJob(job);
      if (job.state === "running") timer = setTimeout(tick, 500); else jobEnded();
    } catch (error) {
      if (!stopped) { showError(error.message); jobEnded(); }
    }
  };
  tick();
}

// Stop: the job commits the batch in flight and ends "interrupted".
async function stopJob() {
  const id = followedJob;
  if (!id) return;
  stoppingJob = id;
  $("#job-stop").disabled = true;
  $("#job-state").textContent = "Stopping…";
  try {
    await api(`/api/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (error) {
    stoppingJob = null;
    $("#job-stop").disabled = false;
    showError(error.message);
  }
}

function renderJob(job) {
  const c = job.counts || {};
  const running = job.state === "running";
  $("#job-state").textContent = running ? (stoppingJob === job.id ? "Stopping…" : "Indexing…") : `Index job ${job.state}`;
  $("#job-stop").hidden = !running;
  $("#job-stop").disabled = stoppingJob === job.id;
  $("#job-state").className = `state-${job.state}`;
  $("#job-folders").textContent = (job.folders || []).join(", ");
  // The bar is the images embedded out of those to embed (copies, moves and files already
  // indexed are no work), as the terminal's; the total grows while a scan still counts.
  const bar = $("#job-progress");
  if (c.to_embed) { bar.max = c.to_embed; bar.value = c.embedded || 0; }
  else if (job.state === "running") bar.removeAttribute("value"); // indeterminate until there is work
  else { bar.max = 1; bar.value = 1; }
  const counting = running && c.scanning ? " (counting…)" : "";
  const counts = [["Embedded", `${numbers.format(c.embedded || 0)} / ${numbers.format(c.to_embed || 0)}${counting}`],
    ["Read", c.read], ["Copies", c.copied], ["Moved", c.moved], ["Unchanged", c.unchanged],
    ["Removed", c.removed], ["Failed", c.failed]];
  $("#job-counts").replaceChildren(...counts.map(([label, value]) => el("div", {},
    el("dt", { text: label }),
    el("dd", { class: label === "Failed" && value ? "bad" : null, text: typeof value === "number" ? numbers.format(value) : value ?? "0" }))));
  $("#job-error").hidden = !job.error;
  $("#job-error").textContent = job.error || "";
  if (job.state === "failed" && job.error) showError(`Index job failed: ${job.error}`);
  if (health) { health.job = job; updatePill(); } // "indexing ·" in the pill while it runs
}

function jobEnded() {
  followedJob = null;
  stoppingJob = null;
  stopFollowing = null;
  $("#job-stop").hidden = true;
  $("#index-start").disabled = false;
  duplicatesLoaded = false; // the library changed: reload these views on their next visit
  refreshHealth();
  if (currentView() === "status") loadStatus();
}

/* ---------- health, models, pill ---------- */

function fillSelect(select, names, preferred) {
  const keep = select.value || preferred;
  select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  if (!names.length) select.append(el("option", { value: "", text: "(none indexed)" }));
  if (names.includes(keep)) select.value = keep;
}

function fillChecks(fieldset, names, defaults) {
  const was = new Map([...fieldset.querySelectorAll("input")].map((box) => [box.value, box.checked]));
  const legend = $("legend", fieldset);
  fieldset.replaceChildren(legend, ...names.map((name) => el("label", { class: "check" },
    el("input", { type: "checkbox", value: name, checked: was.has(name) ? was.get(name) : defaults.includes(name) }),
    name)));
  if (!names.length) fieldset.append(el("span", { class: "muted", text: "no models" }));
}

function updatePill() {
  const pill = $("#pill");
  if (!health) return;
  const vectors = health.vectors || {};
  const model = $("#model").value || Object.keys(vectors)[0];
  const indexing = health.job?.state === "running" ? "indexing · " : "";
  pill.textContent = model ? `${indexing}${numbers.format(vectors[model] ?? 0)} vectors · ${model}` : `${indexing}no vectors yet`;
  pill.title = [`dreamsearch ${health.version ?? ""}`, ...Object.entries(vectors).map(([m, n]) => `${m}: ${numbers.format(n)} vectors`)].join("\n");
  pill.classList.remove("bad");
}

async function refreshHealth() {
  try {
    health = await api("/api/health");
  } catch (error) {
    $("#pill").textContent = error.status === 401 ? "token needed" : "offline";
    $("#pill").title = "Click to try again";
    $("#pill").classList.add("bad");
    showError(error.message);
    return;
  }
  const indexed = Object.keys(health.vectors || {});
  const known = [...new Set([...indexed, ...(health.models_loaded || [])])];
  fillSelect($("#model"), indexed, health.default_model);
  fillSelect($("#dup-model"), indexed, health.default_model);
  fillChecks($("#compare-models"), indexed, indexed);
  $("#compare-hint").hidden = indexed.length >= 2;
  fillChecks($("#index-models"), known, indexed.length ? indexed : known.slice(0, 1));
  updatePill();
  if (health.job?.state === "running") followJob(health.job.id);
  followLibrary(); // runs for the page's life
}

/* ---------- watched folders (serve --watch): "N new photos" ---------- */

let watchedSeq = null; // the last batch seen
let newPhotos = null; // photos added since the results were refreshed (null: nothing changed)

// The watcher's batches as they land (GET /api/events), read through fetch so that a token
// goes with it (EventSource cannot send one); after a break, again from the last batch seen.
async function followLibrary() {
  if (!health?.watch || watchedSeq !== null) return;
  watchedSeq = health.watch.batches;
  showWatchWarnings(health.watch.warnings);
  for (;;) {
    try {
      const response = await request(`/api/events?after=${watchedSeq}`);
      if (!response.ok) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const events = (buffered + value).split("\n\n");
        buffered = events.pop();
        for (const event of events) {
          const data = JSON.parse(event.slice(event.indexOf("data: ") + 6));
          if (event.startsWith("event: warnings")) showWatchWarnings(data); else libraryChanged(data);
        }
      }
    } catch { /* the server restarted or the network dropped: try again shortly */ }
    await new Promise((resolve) => setTimeout(resolve, 5000));
  }
}

async function libraryChanged(batch) {
  watchedSeq = batch.seq;
  if (batch.added + batch.changed + batch.removed + batch.moved === 0) return;
  newPhotos = (newPhotos ?? 0) + batch.added;
  const button = $("#new-photos");
  button.textContent = newPhotos ? `${plural(newPhotos, "new photo", "new photos")} · refresh` : "library changed · refresh";
  button.hidden = false;
  try {
    health.vectors = (await api("/api/health")).vectors;
    updatePill();
  } catch { /* shown by the next request that fails */ }
}

function showWatchWarnings(warnings) {
  $("#watch-warnings").textContent = warnings.join("\n");
  $("#watch-warnings").hidden = warnings.length === 0;
}

function refreshResults() {
  newPhotos = null;
  $("#new-photos").hidden = true;
  if (search.query) runSearch(search.query);
}

/* ---------- routing ---------- */

const VIEWS = ["search", "compare", "duplicates", "status", "index"];
const currentView = () => (VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "search");

function route() {
  const view = currentView();
  for (const name of VIEWS) $(`#view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  if (view === "duplicates" && !duplicatesLoaded) loadDuplicates();
  if (view === "status") loadStatus();
}

/* ---------- start ---------- */

async function main() {
  setupTokenDialog();
  $("#error-close").addEventListener("click", hideError);
  $("#pill").addEventListener("click", () => { if ($("#pill").classList.contains("bad")) refreshHealth(); });
  window.addEventListener("hashchange", route);
  // A file dropped outside a drop zone would make the browser navigate away from the app.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());

  const searchFile = dropZone($("#search-drop"), (file) => runSearch({ kind: "upload", file }));
  const compareTake = dropZone($("#compare-drop"), (file) => { compareFile = file; runCompare(); });
  $("#search-form").addEventListener("submit", (event) => { // Enter in the text box
    event.preventDefault();
    const text = $("#search-text").value.trim();
    if (text) runSearch({ kind: "text", text });
  });
  // A changed model or k reruns the current query ("change" also fires on blur: skip no-ops).
  const rerun = () => {
    updatePill();
    if (search.query && (intValue($("#k"), 25) !== search.k || $("#model").value !== search.model)) runSearch(search.query);
  };
  $("#model").addEventListener("change", rerun);
  $("#k").addEventListener("change", rerun);
  $("#load-more").addEventListener("click", () => runSearch(search.query, search.next));
  $("#compare-form").addEventListener("submit", (event) => { event.preventDefault(); runCompare(); });
  $("#dup-form").addEventListener("submit", (event) => { event.preventDefault(); loadDuplicates(); });
  $("#show-failed").addEventListener("change", loadStatus);
  $("#status-refresh").addEventListener("click", loadStatus);
  $("#index-form").addEventListener("submit", startIndex);
  $("#job-stop").addEventListener("click", stopJob);
  $("#new-photos").addEventListener("click", refreshResults);

  // Ctrl-V of a picture: the query of the search or compare view, whichever is open.
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (!file) return;
    event.preventDefault();
    if (currentView() === "compare") compareTake(file);
    else { if (currentView() !== "search") location.hash = "#search"; searchFile(file); }
  });

  await refreshHealth(); // model lists first, so the first view loads with the right model
  route();
}

main();
