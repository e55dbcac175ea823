// The iwan search page: plain JavaScript against the service's own API (same origin, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 20;
let collections = [];
let last = null; // the query shown: {kind: "text"|"image"|"id", value, offset}

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
  chooseCollection();
}

function current() {
  return collections.find((c) => c.name === $("collection").value);
}

function chooseCollection() {
  const c = current();
  const picker = $("method");
  picker.replaceChildren();
  if (!c) return;
  for (const m of c.methods) picker.append(new Option(m, m, m === c.default_method, m === c.default_method));
  $("collection-info").textContent =
    `${c.size.toLocaleString()} images · words by ${c.predictor}` + (c.hash_model ? ` · hashes by ${c.hash_model}` : "");
}

async function search(query, append) {
  const c = current();
  if (!c) return;
  // Words are searched by IWAN unless a method is chosen; images by the chosen (default) method.
  const params = new URLSearchParams({ k: PAGE, offset: query.offset });
  if (query.kind !== "text" || $("method").value !== c.default_method) params.set("method", $("method").value);
  let init;
  if (query.kind === "image") {
    const form = new FormData();
    form.append("image", query.value, query.value.name || "query.jpg");
    init = { method: "POST", body: form };
  } else {
    const body = query.kind === "text" ? { text: query.value } : { image_id: query.value };
    init = { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
  }
  show("Searching…");
  let response, body;
  try {
    response = await fetch(`/v1/collections/${encodeURIComponent(c.name)}/search?${params}`, init);
    body = await response.json();
  } catch (err) {
    show(`The server did not answer: ${err}`, true);
    return;
  }
  if (!response.ok) {
    show(errorText(body, response), true);
    return;
  }
  last = query;
  render(body, append);
}

function describeQuery(query) {
  if (query.kind === "text") return `words “${query.value}”`;
  if (query.kind === "image") return `image ${query.value.name || "upload"}`;
  return `image ${query.value} (more like this)`;
}

function render(body, append) {
  const grid = $("results");
  if (!append) grid.replaceChildren();
  for (const r of body.results) grid.append(card(r));
  const shown = grid.children.length;
  show(shown ? `${shown} results for ${describeQuery(last)} by ${body.method}` : `No result for ${describeQuery(last)}`);
  const words = body.query.words.map((w) => `${w.word} (${w.weight.toFixed(2)})`).join(", ");
  const unknown = body.query.unknown.length ? ` · not in the norms: ${body.query.unknown.join(", ")}` : "";
  $("query-words").textContent = words ? `query words: ${words}${unknown}` : unknown;
  const t = body.timing_ms;
  $("timing").textContent = `${t.total.toFixed(1)} ms (model ${t.model.toFixed(1)} ms, search ${t.search.toFixed(1)} ms)`;
  $("more").hidden = body.results.length < PAGE;
}

function why(e) {
  const parts = [];
  if (e.path) parts.push(`${e.path.map((n) => n.toLowerCase()).join(" → ")} (d ${Number(e.distance).toFixed(2)})`);
  if (e.hamming !== undefined) parts.push(`Hamming ${e.hamming} · cosine ${Number(e.cosine).toFixed(3)}`);
  if (e.ranks) parts.push("ranks: " + Object.entries(e.ranks).map(([m, r]) => `${m} ${r ?? "–"}`).join(", "));
  return parts.join(" · ") || "—";
}

function card(r) {
  const item = document.createElement("figure");
  item.className = "result";
  item.tabIndex = 0;
  item.dataset.imageId = r.image_id;
  item.title = "More like this";
  const img = document.createElement("img");
  img.src = r.thumbnail_url;
  img.alt = r.label || `image ${r.image_id}`;
  const label = document.createElement("div");
  label.className = "label";
  label.textContent = r.label || `image ${r.image_id}`;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `#${r.rank} · score ${r.score === null ? "–" : r.score.toFixed(3)} · id ${r.image_id}`;
  const line = document.createElement("div");
  line.className = "why";
  line.textContent = "why: " + why(r.explanation);
  item.append(img, label, meta, line);
  const more = () => search({ kind: "id", value: r.image_id, offset: 0 }, false);
  item.addEventListener("click", more);
  item.addEventListener("keydown", (e) => { if (e.key === "Enter") more(); });
  return item;
}

function searchFile(file) {
  if (file) search({ kind: "image", value: file, offset: 0 }, false);
}

$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("words").value.trim();
  if (text) search({ kind: "text", value: text, offset: 0 }, false);
});
$("image-file").addEventListener("change", (e) => searchFile(e.target.files[0]));
$("collection").addEventListener("change", () => { chooseCollection(); if (last) search({ ...last, offset: 0 }, false); });
$("method").addEventListener("change", () => { if (last) search({ ...last, offset: 0 }, false); });
$("more").addEventListener("click", () => { if (last) search({ ...last, offset: last.offset + PAGE }, true); });

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
  $("add-status").textContent = `Added ${body.added.length}` + (skipped ? `; skipped ${skipped}` : "");
  await loadCollections();
});

loadCollections().catch((err) => show(`Cannot list collections: ${err}`, true));
