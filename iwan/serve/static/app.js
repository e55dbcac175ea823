// The iwan search page: plain JavaScript against the service's own API (same origin, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 20;
let collections = [];
// An example: {kind: "text", value} | {kind: "id", value: image id, label} | {kind: "image", value: Blob, name}.
// Marked results, in marking order: image id -> {like: true (more like this) | false, label, thumbnail}.
const marks = new Map();
// The search shown: {base, like: [examples], unlike: [examples], offset}, its base the query typed,
// uploaded or clicked (the first positive example); "More", new filters and Refine start from it.
let last = null;
let asked = 0; // searches sent: only the answer to the latest is shown

function show(status, isError) {
  $("status").textContent = status;
  $("status").className = isError ? "error" : "";
}

function errorText(body, response) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((e) => e.msg).join("; ");
  return `${response.status} ${response.statusText}`;
}

async function loadCollections() {
  const response = await fetch("/v1/collections");
  collections = await response.json();
  const picker = $("collection");
  const chosen = picker.value;
  picker.replaceChildren();
  for (const c of collections) picker.append(new Option(c.name, c.name, false, c.name === chosen));
  if (!collections.length) show("This server has no collection loaded yet.", true);
  await chooseCollection(chosen === picker.value);
}

function current() {
  return collections.find((c) => c.name === $("collection").value);
}

async function chooseCollection(same) {
  const c = current();
  const picker = $("method");
  const method = picker.value;
  picker.replaceChildren();
  if (!c) return;
  for (const m of c.methods) {
    const selected = same && c.methods.includes(method) ? m === method : m === c.default_method;
    picker.append(new Option(m, m, m === c.default_method, selected));
  }
  $("collection-info").textContent =
    `${c.size.toLocaleString()} images · words by ${c.predictor}` + (c.hash_model ? ` · hashes by ${c.hash_model}` : "");
  $("collapse-row").hidden = !c.hash_model; // near-duplicates are told apart by the hash model's codes
  if (!c.hash_model) $("collapse").checked = false;
  if (!same) {
    marks.clear(); // image ids are examples only in a collection that holds them
    renderMarks();
  }
  await loadLabels(c, same);
}

async function loadLabels(c, same) {
  const kept = same ? labelChoices() : { labels: [], exclude_labels: [] };
  const response = await fetch(`/v1/collections/${encodeURIComponent(c.name)}/labels`);
  const body = await response.json().catch(() => null);
  const box = $("label-choices");
  box.replaceChildren();
  if (!response.ok || !body) {
    $("label-note").textContent = `Cannot list the labels: ${errorText(body, response)}`;
    return;
  }
  for (const { label, count } of body.labels) {
    const row = document.createElement("label");
    row.className = "label-choice";
    const choice = document.createElement("select");
    choice.dataset.label = label;
    choice.append(new Option("any", ""), new Option("only", "keep"), new Option("not", "exclude"));
    choice.value = kept.labels.includes(label) ? "keep" : kept.exclude_labels.includes(label) ? "exclude" : "";
    row.append(choice, ` ${label} (${count.toLocaleString()})`);
    box.append(row);
  }
  $("label-note").textContent = body.distinct > body.labels.length
    ? `The ${body.labels.length} most frequent of ${body.distinct.toLocaleString()} labels.`
    : body.distinct ? "" : "The images of this collection have no labels.";
  summarizeFilters();
}

function labelChoices() {
  const chosen = { labels: [], exclude_labels: [] };
  for (const choice of document.querySelectorAll("#label-choices select")) {
    if (choice.value === "keep") chosen.labels.push(choice.dataset.label);
    if (choice.value === "exclude") chosen.exclude_labels.push(choice.dataset.label);
  }
  return chosen;
}

function filters() {
  const { labels, exclude_labels } = labelChoices();
  const given = {};
  if (labels.length) given.labels = labels;
  if (exclude_labels.length) given.exclude_labels = exclude_labels;
  const minScore = $("min-score").value.trim();
  if (minScore !== "" && Number.isFinite(Number(minScore))) given.min_score = Number(minScore);
  if ($("collapse").checked) given.collapse_duplicates = true;
  return given;
}

function summarizeFilters() {
  const f = filters();
  const parts = [];
  if (f.labels) parts.push(`only ${f.labels.join(", ")}`);
  if (f.exclude_labels) parts.push(`not ${f.exclude_labels.join(", ")}`);
  if (f.min_score !== undefined) parts.push(`score ≥ ${f.min_score}`);
  if (f.collapse_duplicates) parts.push("near-duplicates once");
  $("filter-summary").textContent = parts.join(" · ") || "none";
}

function example(query) {
  if (query.kind === "text") return { text: query.value };
  if (query.kind === "id") return { image_id: query.value };
  return null; // an uploaded image travels as a file
}

// One request for every search: the base query is the first positive example, the marks follow.
function requestFor(query) {
  const c = current();
  const positive = positives(query);
  const negative = query.unlike;
  const fields = { k: PAGE, offset: query.offset, ...filters() };
  // A text example is searched by IWAN unless a method is chosen; images by the chosen (default) method.
  if (!positive.some((e) => e.kind === "text") || $("method").value !== c.default_method) fields.method = $("method").value;
  if (!positive.some((e) => e.kind === "image")) {
    const body = { ...fields, positive: positive.map(example), negative: negative.map(example) };
    return { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
  }
  // The uploaded image is sent again, from the bytes kept in memory, beside the marks as JSON parts.
  const form = new FormData();
  for (const e of positive) {
    if (e.kind === "image") form.append("positive", e.value, e.name);
    else form.append("positive", JSON.stringify(example(e)));
  }
  for (const e of negative) form.append("negative", JSON.stringify(example(e)));
  for (const [key, value] of Object.entries(fields)) {
    for (const one of Array.isArray(value) ? value : [value]) form.append(key, String(one));
  }
  return { method: "POST", body: form };
}

async function search(query, append) {
  const c = current();
  if (!c) return;
  show("Searching…");
  const mine = ++asked;
  const cutAt = filters().min_score;
  let response, body;
  try {
    response = await fetch(`/v1/collections/${encodeURIComponent(c.name)}/search`, requestFor(query));
    body = await response.json();
  } catch (err) {
    if (mine === asked) show(`The server did not answer: ${err}`, true);
    return;
  }
  if (mine !== asked) return;
  if (!response.ok) {
    show(errorText(body, response), true);
    return;
  }
  last = query;
  render(body, append, cutAt !== undefined);
}

function plain(base) {
  return { base, like: [], unlike: [], offset: 0 };
}

function positives(query) {
  return [query.base, ...query.like];
}

function describe(e) {
  if (e.kind === "text") return `words “${e.value}”`;
  if (e.kind === "image") return `image ${e.name}`;
  return `image ${e.value}` + (e.label ? ` (${e.label})` : "");
}

function describeQuery(query) {
  const parts = [describe(query.base)];
  const counts = [];
  if (query.like.length) counts.push(`${query.like.length} more-like`);
  if (query.unlike.length) counts.push(`${query.unlike.length} less-like`);
  const n = query.like.length + query.unlike.length;
  if (n) parts.push(`refined by ${counts.join(" and ")} mark${n > 1 ? "s" : ""}`);
  return parts.join(", ");
}

function render(body, append, cut) {
  const grid = $("results");
  if (!append) grid.replaceChildren();
  for (const r of body.results) grid.append(card(r, positives(last)));
  const shown = grid.children.length;
  const passed = cut ? ` (${body.passed} on this page met the minimum score)` : "";
  show(shown ? `${shown} results for ${describeQuery(last)} by ${body.method}${passed}`
    : `No result for ${describeQuery(last)}${passed}`);
  const words = body.query.words.map((w) => `${w.word} (${w.weight.toFixed(2)})`).join(", ");
  const unknown = body.query.unknown.length ? ` · not in the norms: ${body.query.unknown.join(", ")}` : "";
  $("query-words").textContent = words ? `query words: ${words}${unknown}` : unknown;
  const t = body.timing_ms;
  $("timing").textContent = `${t.total.toFixed(1)} ms (model ${t.model.toFixed(1)} ms, search ${t.search.toFixed(1)} ms)`;
  $("more").hidden = body.results.length < PAGE;
}

function why(e, negatives) {
  const parts = [];
  if (e.path) parts.push(`${e.path.map((n) => n.toLowerCase()).join(" → ")} (d ${Number(e.distance).toFixed(2)})`);
  if (e.negative) {
    const against = negatives[e.negative.example];
    parts.push(`pushed down ${Number(e.penalty).toFixed(2)}` + (against ? ` by ${describe(against)}` : "") +
      `: ${e.negative.path.map((n) => n.toLowerCase()).join(" → ")}`);
  }
  if (e.hamming !== undefined) parts.push(`Hamming ${e.hamming} · cosine ${Number(e.cosine).toFixed(3)}`);
  if (e.ranks) parts.push("ranks: " + Object.entries(e.ranks).map(([m, r]) => `${m} ${r ?? "–"}`).join(", "));
  if (e.group_size > 1) parts.push(`stands for ${e.group_size} near-duplicates`);
  return parts.join(" · ") || "—";
}

function line(className, text) {
  const div = document.createElement("div");
  div.className = className;
  div.textContent = text;
  return div;
}

function card(r, examples) {
  const item = document.createElement("figure");
  item.className = "result";
  item.dataset.imageId = r.image_id;
  const name = r.label ? `image ${r.image_id} (${r.label})` : `image ${r.image_id}`;
  const thumb = document.createElement("button");
  thumb.type = "button";
  thumb.className = "thumb";
  thumb.title = "Search by this image";
  thumb.setAttribute("aria-label", `Search by ${name}`);
  const img = document.createElement("img");
  img.src = r.thumbnail_url;
  img.alt = r.label || `image ${r.image_id}`;
  thumb.append(img);
  thumb.addEventListener("click", () => {
    search(plain({ kind: "id", value: r.image_id, label: r.label }), false);
  });
  item.append(thumb, line("label", r.label || `image ${r.image_id}`),
    line("meta", `#${r.rank} · score ${r.score === null ? "–" : r.score.toFixed(3)} · id ${r.image_id}`));
  const led = examples[r.explanation.example];
  if (examples.length > 1 && led) item.append(line("example", `from ${describe(led)}`));
  item.append(line("why", "why: " + why(r.explanation, last.unlike)));
  const buttons = document.createElement("div");
  buttons.className = "mark-buttons";
  for (const like of [true, false]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = like ? "mark-like" : "mark-unlike";
    button.textContent = like ? "More like this" : "Less like this";
    button.setAttribute("aria-label", `${button.textContent}: ${name}`);
    button.addEventListener("click", () => toggleMark(r, like));
    buttons.append(button);
  }
  item.append(buttons);
  paintMark(item);
  return item;
}

function toggleMark(r, like) {
  const mark = marks.get(r.image_id);
  if (mark && mark.like === like) marks.delete(r.image_id);
  else marks.set(r.image_id, { like, label: r.label, thumbnail: r.thumbnail_url });
  renderMarks();
}

function paintMark(item) {
  const mark = marks.get(Number(item.dataset.imageId));
  item.classList.toggle("marked-like", mark?.like === true);
  item.classList.toggle("marked-unlike", mark?.like === false);
  item.querySelector(".mark-like").setAttribute("aria-pressed", String(mark?.like === true));
  item.querySelector(".mark-unlike").setAttribute("aria-pressed", String(mark?.like === false));
}

function renderMarks() {
  const list = $("mark-list");
  list.replaceChildren();
  for (const [id, mark] of marks) {
    const entry = document.createElement("li");
    entry.className = mark.like ? "like" : "unlike";
    entry.dataset.imageId = id;
    const img = document.createElement("img");
    img.src = mark.thumbnail;
    img.alt = "";
    const text = document.createElement("span");
    const name = `image ${id}` + (mark.label ? ` (${mark.label})` : "");
    text.textContent = `${mark.like ? "more like" : "less like"} ${name}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "quiet";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove the mark on ${name}`);
    remove.addEventListener("click", () => { marks.delete(id); renderMarks(); });
    entry.append(img, text, remove);
    list.append(entry);
  }
  $("marks").hidden = marks.size === 0; // marks come from results, so there is a query to refine
  for (const item of document.querySelectorAll("#results .result")) paintMark(item);
}

function refine() {
  const marked = (like) => [...marks].filter(([, m]) => m.like === like)
    .map(([id, m]) => ({ kind: "id", value: id, label: m.label }));
  if (last) search({ base: last.base, like: marked(true), unlike: marked(false), offset: 0 }, false);
}

async function searchFile(file) {
  if (!file) return;
  // The bytes are kept: a refined search sends the uploaded image again as an example.
  const kept = new Blob([await file.arrayBuffer()], { type: file.type });
  search(plain({ kind: "image", value: kept, name: file.name || "upload" }), false);
}

function again() {
  summarizeFilters();
  if (last) search({ ...last, offset: 0 }, false);
}

$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("words").value.trim();
  if (!text) return;
  search(plain({ kind: "text", value: text }), false);
});
$("image-file").addEventListener("change", (e) => searchFile(e.target.files[0]));
$("collection").addEventListener("change", async () => {
  const shown = last;
  last = null;
  $("results").replaceChildren();
  $("more").hidden = true;
  await chooseCollection(false);
  // Words and an uploaded image mean the same in another collection; a stored image's id does not.
  if (shown && shown.base.kind !== "id") search(plain(shown.base), false);
});
$("method").addEventListener("change", again);
$("label-choices").addEventListener("change", again);
$("min-score").addEventListener("change", again);
$("collapse").addEventListener("change", again);
$("more").addEventListener("click", () => { if (last) search({ ...last, offset: last.offset + PAGE }, true); });
$("refine").addEventListener("click", refine);
$("clear-marks").addEventListener("click", () => { marks.clear(); renderMarks(); });

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  searchFile(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("image-file").click(); });

$("api-key").addEventListener("input", (e) => { $("add-form").hidden = !e.target.value; });
$("add-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const c = current();
  const form = new FormData();
  for (const file of $("add-files").files) form.append("images", file, file.name);
  if ($("add-label").value.trim()) form.append("label", $("add-label").value.trim());
  $("add-status").textContent = "Adding…";
  const response = await fetch(`/v1/collections/${encodeURIComponent(c.name)}/images`, {
    method: "POST", body: form, headers: { Authorization: `Bearer ${$("api-key").value}` },
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    $("add-status").textContent = errorText(body, response);
    return;
  }
  const skipped = body.skipped.map((s) => `${s.file}: ${s.reason}`).join("; ");
  const near = body.near_duplicates.map((d) => `${d.file} (image ${d.image_id}) is nearly the same as image ${d.of}`).join("; ");
  $("add-status").textContent = `Added ${body.added.length}` + (skipped ? `; skipped ${skipped}` : "") +
    (near ? `; near-duplicates: ${near}` : "");
  await loadCollections();
});

loadCollections().catch((err) => show(`Cannot list collections: ${err}`, true));
