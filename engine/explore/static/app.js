// mmrec explorer: the page's behaviour. Plain JavaScript, no framework, no build step.
// Every call goes to the explorer's JSON API (/api/...), which calls the service through
// the Python client. Item text is always inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, lastRecs: [], apiKey: sessionStorage.getItem("mmrec-key") || "" };
const SECTIONS = ["search", "users", "info"];
const STAGES = ["profile", "encode", "retrieve", "rerank", "diversify", "explain"];

// ---- calling the explorer -------------------------------------------------------------
async function api(path, body) {
  const headers = {};
  if (state.apiKey) headers.Authorization = "Bearer " + state.apiKey;
  const options = { headers };
  if (body !== undefined) {
    options.method = "POST";
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("UNAVAILABLE: the explorer does not answer (" + err.message + ")");
  }
  let data;
  try {
    data = await response.json();
  } catch (err) {
    throw new Error("HTTP " + response.status + ": the explorer sent no JSON");
  }
  if (!response.ok || data.error) {
    const e = data.error || { status: "HTTP " + response.status, message: "" };
    throw new Error(e.status + ": " + e.message);
  }
  return data;
}

function showError(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

function say(text) { $("status").textContent = text; }

async function guarded(action) {
  showError(null);
  try { await action(); } catch (err) { showError(err); say(""); }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// ---- sections ---------------------------------------------------------------------------
function showSection() {
  const wanted = location.hash.slice(1);
  const current = SECTIONS.includes(wanted) ? wanted : "search";
  for (const name of SECTIONS) {
    $(name).hidden = name !== current;
    const link = $("nav-" + name);
    if (name === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (current === "info") loadInfo();
}

// ---- search form ------------------------------------------------------------------------
function numberOrNull(id) {
  const raw = $(id).value.trim();
  return raw === "" ? null : Number(raw);
}

function knobs() {
  const weights = {};
  for (const input of $("weights").querySelectorAll("input")) {
    if (input.value.trim() !== "") weights[input.dataset.channel] = Number(input.value);
  }
  const filter = { any: {}, ranges: {} };
  for (const box of $("chips").querySelectorAll("input:checked")) {
    (filter.any[box.dataset.key] = filter.any[box.dataset.key] || []).push(box.value);
  }
  for (const set of $("ranges").querySelectorAll("fieldset")) {
    const [low, high] = set.querySelectorAll("input");
    const gte = low.value === "" ? null : Number(low.value);
    const lte = high.value === "" ? null : Number(high.value);
    if (gte !== null || lte !== null) filter.ranges[set.dataset.key] = { gte, lte };
  }
  return {
    tenant: $("tenant").value.trim(), filter, weights,
    fusion: $("fusion").value, rrf_k: numberOrNull("rrf-k") || 0,
    top_k: numberOrNull("top-k") || 0, budget_ms: numberOrNull("budget") || 0,
    rerank: $("rerank").checked ? true : null, explain_reason: $("reason").checked,
  };
}

function readImage() {
  const file = $("image").files[0];
  if (!file) return Promise.resolve("");
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new Error("the image file could not be read"));
    reader.readAsDataURL(file);
  });
}

async function runSearch(event) {
  event.preventDefault();
  await guarded(async () => {
    say("Searching…");
    const body = { ...knobs(), text: $("q").value.trim(), image: await readImage() };
    const result = await api("/api/search", body);
    drawTimings($("search-timings"), result, "search");
    drawGrid($("results"), result.hits, {});
    say(result.hits.length + " results (" + result.channels.join(", ") + "; " + result.fusion + ")");
    await loadFacets();
  });
}

// ---- facets: chips and ranges from the attributes seen ----------------------------------
async function loadFacets() {
  const tenant = $("tenant").value.trim();
  const facets = await api("/api/facets?tenant=" + encodeURIComponent(tenant));
  const chosen = new Set([...$("chips").querySelectorAll("input:checked")].map((b) => b.id));
  const chips = $("chips");
  chips.replaceChildren();
  for (const [key, values] of Object.entries(facets.chips)) {
    const list = el("div", { class: "chip-list" });
    values.forEach((value, index) => {
      const id = "chip-" + key + "-" + index;
      const box = el("input", { type: "checkbox", id, value, "data-key": key });
      box.checked = chosen.has(id);
      list.append(box, el("label", { for: id, text: value }));
    });
    chips.append(el("fieldset", {}, el("legend", { text: key }), list));
  }
  const ranges = $("ranges");
  for (const [key, span] of Object.entries(facets.ranges)) {
    if (ranges.querySelector('[data-key="' + CSS.escape(key) + '"]')) continue;
    const set = el("fieldset", { "data-key": key }, el("legend", { text: key }));
    for (const [side, bound] of [["from", span.min], ["to", span.max]]) {
      const id = "range-" + key + "-" + side;
      set.append(el("div", { class: "field" }, el("label", { for: id, text: side }),
        el("input", { id, type: "number", step: "any", placeholder: String(bound) })));
    }
    ranges.append(set);
  }
  $("tenants").replaceChildren(...facets.tenants.map((t) => el("option", { value: t })));
}

// ---- results ----------------------------------------------------------------------------
function highlight(text, terms) {
  const out = document.createDocumentFragment();
  const words = (terms || []).filter(Boolean).map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  if (!words.length) { out.append(text); return out; }
  const pattern = new RegExp("(?<![\\p{L}\\p{N}])(" + words.join("|") + ")(?![\\p{L}\\p{N}])", "giu");
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    out.append(text.slice(last, match.index), el("mark", { text: match[0] }));
    last = match.index + match[0].length;
  }
  out.append(text.slice(last));
  return out;
}

function describe(attributes) {
  return Object.entries(attributes || {})
    .filter(([, v]) => v !== null && v !== "")
    .map(([k, v]) => k + ": " + (Array.isArray(v) ? v.join(", ") : String(v))).join(" · ");
}

function explanationView(hit) {
  const e = hit.explanation;
  if (!e) return null;
  const list = el("ul");
  for (const c of e.channels) {
    const bar = el("span");
    bar.style.width = Math.max(4, Math.round(100 / c.rank)) + "%";
    list.append(el("li", {}, c.name + ": rank " + c.rank + ", score " + c.score.toFixed(3),
      el("div", { class: "bar", "aria-hidden": "true" }, bar)));
  }
  const body = [list,
    el("p", { text: "hybrid: rank " + e.fused_rank + ", score " + e.fused_score.toFixed(4) })];
  if (e.rerank_score !== null) body.push(el("p", { text: "LLM score " + e.rerank_score.toFixed(3) }));
  if (e.matched_terms.length) body.push(el("p", { text: "matched words: " + e.matched_terms.join(", ") }));
  if (e.because_of.length) {
    body.push(el("p", { class: "because", text: "because of: " +
      e.because_of.map((b) => b.title ? b.title + " (" + b.id + ")" : b.id).join(", ") }));
  }
  if (e.shared_attributes.length) body.push(el("p", { text: "shares: " + e.shared_attributes.join(", ") }));
  if (e.reason) {
    const who = { llm: "LLM", facts: "from the facts" }[e.reason_source] || e.reason_source;
    const rejected = e.reason_rejected ? "; the LLM's sentence was replaced: " + e.reason_rejected : "";
    body.push(el("p", { class: "reason", text: e.reason + " (" + who + rejected + ")" }));
  }
  return el("details", { class: "why" }, el("summary", { text: "Why this result" }), ...body);
}

function moveBadge(id, index, previous) {
  if (!previous.length) return null;
  const before = previous.indexOf(id);
  if (before < 0) return el("span", { class: "badge", text: "new" });
  if (before === index) return null;
  const up = before > index;
  return el("span", { class: up ? "badge" : "badge down",
    text: (up ? "up " : "down ") + Math.abs(before - index) });
}

function card(hit, index, options) {
  const terms = hit.explanation ? hit.explanation.matched_terms : [];
  const title = hit.title || hit.id;
  const img = el("img", { src: hit.thumb, alt: title, loading: "lazy", width: "96", height: "96" });
  const heading = el("h4", {}, highlight(title, terms), moveBadge(hit.id, index, options.previous || []));
  const actions = el("div", { class: "actions", role: "group", "aria-label": "Record for " + title });
  for (const kind of (state.info && state.info.event_kinds) || ["view", "like", "purchase"]) {
    const button = el("button", { type: "button", "data-kind": kind, text: kind,
      "aria-label": kind + " " + title });
    button.addEventListener("click", () => recordEvent(hit, kind));
    actions.append(button);
  }
  return el("li", { class: "card", "data-id": hit.id }, img, heading,
    el("p", { class: "score", text: "score " + hit.score.toFixed(4) + " · #" + (index + 1) }),
    el("p", { class: "meta" }, highlight(describe(hit.attributes) || hit.text, terms)),
    explanationView(hit), actions);
}

function drawGrid(list, hits, options) {
  list.replaceChildren(...hits.map((hit, index) => card(hit, index, options)));
  if (!hits.length) list.append(el("li", { class: "note", text: "nothing found" }));
}

function drawTimings(box, result, what) {
  const parts = [];
  for (const stage of STAGES) {
    if (stage in result.stage_ms) parts.push(stage + " " + result.stage_ms[stage].toFixed(1) + " ms");
  }
  parts.push("round trip " + result.round_trip_ms.toFixed(1) + " ms");
  if (result.reranked) parts.push("LLM re-ranked " + result.reranked);
  if (result.cold_start) parts.push("cold start");
  box.replaceChildren(el("span", { text: what + ":" }), ...parts.map((p) => el("span", { text: p })));
  if (result.budget_exhausted) {
    box.append(el("span", { class: "budget", text: "re-rank budget ran out" }));
  }
}

// ---- users ------------------------------------------------------------------------------
function currentUser() { return $("user").value.trim(); }

async function recordEvent(hit, kind) {
  await guarded(async () => {
    const user = currentUser();
    if (!user) {
      location.hash = "#users";
      throw new Error("pick or create a user first, then record the " + kind + " again");
    }
    const answer = await api("/api/events", { user_id: user, item_id: hit.id, kind,
      tenant: $("tenant").value.trim() });
    drawEvents(answer.events);
    say("recorded " + kind + " of " + (hit.title || hit.id) + " for " + user + " in " +
      answer.round_trip_ms.toFixed(0) + " ms; recommendations refreshed");
    await loadRecommendations();
  });
}

function drawEvents(events) {
  const list = $("events");
  list.replaceChildren(...events.map((e) => el("li", {},
    el("strong", { text: e.kind }), " " + (e.title || e.item_id) + " ",
    el("span", { class: "note", text: new Date(e.timestamp * 1000).toLocaleTimeString() }))));
  if (!events.length) list.append(el("li", { class: "note", text: "no events recorded here yet" }));
}

async function loadRecommendations() {
  const user = currentUser();
  const body = { ...knobs(), user_id: user, context: $("context").value.trim() };
  const result = await api("/api/recommend", body);
  drawTimings($("rec-timings"), result, "recommend");
  drawGrid($("recs"), result.hits, { previous: state.lastRecs });
  state.lastRecs = result.hits.map((h) => h.id);
}

async function loadUser(event) {
  if (event) event.preventDefault();
  await guarded(async () => {
    const user = currentUser();
    if (!user) throw new Error("type a user id, or choose New user");
    $("erased").hidden = true;
    const tenant = encodeURIComponent($("tenant").value.trim());
    const known = await api("/api/user?tenant=" + tenant + "&user_id=" + encodeURIComponent(user));
    drawEvents(known.events);
    $("known-users").replaceChildren(...known.known_users.map((u) => el("option", { value: u })));
    state.lastRecs = [];
    await loadRecommendations();
    say("recommendations for " + user);
  });
}

function newUser() {
  const suffix = Math.random().toString(36).slice(2, 8);
  $("user").value = "visitor-" + suffix;
  state.lastRecs = [];
  loadUser();
}

async function eraseUser() {
  await guarded(async () => {
    const user = currentUser();
    if (!user) throw new Error("pick a user to erase");
    const gone = await api("/api/erase", { user_id: user, tenant: $("tenant").value.trim() });
    const box = $("erased");
    const here = gone.recorded_here.map((e) => e.kind + " " + (e.title || e.item_id));
    box.replaceChildren(el("p", { text: "Erased " + user + ": " + count(gone.events, "event") +
      ", " + count(gone.seen, "seen item") + ", profile " + (gone.profile ? "removed" : "absent") +
      ", " + count(gone.cache_entries, "cache entry", "cache entries") + "." }),
      here.length ? el("p", { text: "Recorded from this page and now removed: " + here.join("; ") }) : null);
    box.hidden = false;
    drawEvents([]);
    $("recs").replaceChildren();
    $("rec-timings").replaceChildren();
    state.lastRecs = [];
    say("erased " + user);
  });
}

function count(n, one, many) { return n + " " + (n === 1 ? one : many || one + "s"); }

// ---- service info -----------------------------------------------------------------------
function applyInfo(info) {
  state.info = info;
  $("service-address").textContent = info.service;
  const image = $("image");
  image.disabled = !info.image_search.on;
  $("image-note").textContent = info.image_search.on ? "CLIP is on: an image searches too."
    : "Image search is off: " + info.image_search.reason;
  const llm = info.models.find((m) => m.role === "llm");
  const llmOn = Boolean(llm && llm.loaded);
  $("rerank").disabled = !llmOn;
  $("reason").disabled = !llmOn;
  $("llm-note").textContent = llmOn ? "LLM: " + llm.name
    : "The LLM is off" + (llm && llm.reason ? ": " + llm.reason : "") + "; re-ranking and LLM reasons are unavailable.";
  const weights = $("weights");
  const legend = weights.querySelector("legend");
  weights.replaceChildren(legend, ...info.channels.filter((c) => c.enabled).map((c) => {
    const id = "weight-" + c.name;
    return el("div", { class: "field" }, el("label", { for: id, text: c.name }),
      el("input", { id, type: "number", min: "0", step: "0.1", "data-channel": c.name,
        placeholder: "default" }));
  }));
}

function drawInfo(info) {
  const summary = $("info-summary");
  summary.replaceChildren();
  for (const [k, v] of [["service", info.service], ["version", info.version], ["device", info.device],
    ["store", info.store], ["items", info.item_count.toLocaleString()]]) {
    summary.append(el("dt", { text: k }), el("dd", { text: String(v) }));
  }
  $("models").tBodies[0].replaceChildren(...info.models.map((m) => el("tr", {},
    el("td", { text: m.role }), el("td", { text: m.name }),
    el("td", { class: m.loaded ? "" : "off", text: m.loaded ? "loaded" : "off: " + m.reason }),
    el("td", { text: Object.entries(m.details).map(([k, v]) => k + ": " + v).join("; ") }))));
  $("channels").tBodies[0].replaceChildren(...info.channels.map((c) => el("tr", {},
    el("td", { text: c.name }), el("td", { text: c.dim ? c.dim + "-d" : "sparse" }),
    el("td", { text: String(c.weight) }), el("td", { text: c.enabled ? "on" : "off" }))));
}

async function loadInfo() {
  await guarded(async () => {
    const info = await api("/api/info");
    applyInfo(info);
    drawInfo(info);
  });
}

function useKey(event) {
  event.preventDefault();
  state.apiKey = $("api-key").value.trim();
  if (state.apiKey) sessionStorage.setItem("mmrec-key", state.apiKey);
  else sessionStorage.removeItem("mmrec-key");
  say(state.apiKey ? "the API key will be sent with every request" : "no API key");
  loadInfo();
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", runSearch);
  $("user-form").addEventListener("submit", loadUser);
  $("new-user").addEventListener("click", newUser);
  $("erase-user").addEventListener("click", eraseUser);
  $("key-form").addEventListener("submit", useKey);
  $("tenant").addEventListener("change", () => guarded(loadFacets));
  window.addEventListener("hashchange", () => { showSection(); $("main").focus(); });
  showSection();
  loadInfo();
});
