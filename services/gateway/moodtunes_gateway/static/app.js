// moodtunes web page: photo in (upload, drop, paste or camera) -> POST /v1/jobs -> poll -> show
// what the model saw and the playlist. Plain ES module, no build step, no third-party code.

const $ = (sel, root = document) => root.querySelector(sel);
const API = "v1/"; // relative, so the page also works behind a path prefix

const EMOTIONS = ["neutral", "happy", "sad", "fear", "angry"];
const EMOTION_LABEL = { neutral: "Neutral", happy: "Happy", sad: "Sad", fear: "Fearful", angry: "Angry" };
const STAGES = ["queued", "detecting", "classifying", "recommending"];
const STAGE_TEXT = {
  uploading: "Uploading your photo…",
  queued: "Waiting for a free worker…",
  detecting: "Finding faces in your photo…",
  classifying: "Reading the emotion on the face…",
  recommending: "Choosing music for that mood…",
};
const TEMPO_SCALE = 244; // BPM that maps to 1.0, as in the recommender's feature space
const POLL_TIMEOUT_MS = 200_000;

// Short, friendly copy for the modes we know; the server's list decides which ones exist.
const MODE_COPY = {
  match: { title: "Match my mood", text: "Music that mirrors how you feel right now." },
  uplift: { title: "Lift my mood", text: "Starts where you are, then moves song by song toward brighter music." },
  calm: { title: "Calm me down", text: "Lower energy and a slower tempo, to settle anger or worry." },
};
const MODE_ICON = {
  match: '<path d="M4 12h16M4 12l3-3m-3 3 3 3M20 12l-3-3m3 3-3 3"/>',
  uplift: '<path d="M4 18 10 12l4 3 6-8"/><path d="M15 7h5v5"/>',
  calm: '<path d="M3 10c3-3 6 3 9 0s6 3 9 0M3 15c3-3 6 3 9 0s6 3 9 0"/>',
};
const FALLBACK_MODES = ["match", "uplift", "calm"].map((name) => ({ name, description: MODE_COPY[name].text }));
const DEFAULT_GENRES = ["pop", "rock", "rap", "hip-hop", "r&b", "edm", "electronic", "latin", "jazz",
  "blues", "classical", "country", "alternative", "anime"];

const FEATURES = [
  { key: "valence", label: "Positivity", hint: "valence: how happy or bright it sounds" },
  { key: "energy", label: "Energy", hint: "intensity and activity" },
  { key: "danceability", label: "Danceability", hint: "how easy it is to dance to" },
  { key: "tempo", label: "Tempo", hint: "beats per minute" },
  { key: "mode", label: "Major key", hint: "share of songs in a major key" },
];

// Every error code the API or the page can produce -> plain words and what to do.
const SHRINK = { shrink: true };
const ERRORS = {
  missing_image: { title: "Choose a photo first", help: "Upload a photo, drop one on the box, or take one with the camera." },
  empty_file: { title: "That file is empty", help: "Choose a photo that opens on your device; this one has no content (0 bytes)." },
  invalid_image: { title: "We couldn't read that file as a photo", help: "Choose a JPEG, PNG or WebP photo. If it came from a chat app or the web, save it as a photo first, or take a screenshot of it." },
  unsupported_image_format: { title: "That kind of file isn't supported", help: "Use a JPEG, PNG or WebP photo. iPhone photos (HEIC): share them as “Most Compatible”, or take a screenshot." },
  file_too_large: { title: "That photo is too big", help: "The limit is 10 MB. Use the button below to shrink it here in your browser, or choose a smaller photo.", ...SHRINK },
  image_too_many_pixels: { title: "That photo has too many pixels", help: "Use the button below to shrink it here in your browser, or choose a smaller photo.", ...SHRINK },
  no_face: { title: "We couldn't find a face in that photo", help: "Use a photo where a face is clearly visible: facing the camera, in good light, not too small or cut off." },
  invalid_mode: { title: "This server doesn't offer that mode", help: "Choose another option under “What should the music do?” and try again." },
  invalid_limit: { title: "Number of songs must be between 1 and 50", help: "Open “Filters and playlist length” and change the number of songs." },
  invalid_filters: { title: "Some filter values don't work together", help: "Check the filters: the “from” year must not be after the “up to” year." },
  invalid_filter: { title: "A filter value isn't accepted", help: (i) => `${i.message ? `${i.message} ` : ""}Open “Filters and playlist length”, fix or clear it, and try again.` },
  invalid_diversity: { title: "The variety setting isn't accepted", help: "Move the variety slider back into range and try again." },
  invalid_request: { title: "Some settings aren't valid", help: "Check the filters and the number of songs, then try again.", retry: true },
  queue_unavailable: { title: "The service is busy right now", help: "Nothing is wrong with your photo. Wait a few seconds and try again.", retry: true },
  queue_full: { title: "The service is busy right now", help: "Many photos are waiting to be read. Nothing is wrong with yours: try again in a little while.", retry: true },
  rate_limited: { title: "That was a lot of photos in a short time", help: "Wait a minute, then try again.", retry: true },
  too_many_jobs: { title: "You already have several photos in progress", help: "Wait for them to finish, then try again.", retry: true },
  database_unavailable: { title: "The service is busy right now", help: "Nothing is wrong with your photo. Wait a few seconds and try again.", retry: true },
  model_unavailable: { title: "The emotion reader is not available right now", help: "Nothing is wrong with your photo. Please try again in a minute.", retry: true },
  too_many_attempts: { title: "We couldn't process that photo", help: "It was tried several times without finishing. Try another photo, or the same one again later.", retry: true },
  timeout: { title: "That took too long", help: "The service may be overloaded. Try again; if it keeps happening, come back later.", retry: true },
  job_not_found: { title: "We lost track of that request", help: "Please send the photo again.", retry: true },
  image_missing: { title: "Your photo was lost on the server", help: "Please send it again.", retry: true },
  recommendation_failed: { title: "We couldn't build a playlist", help: "Try again. If you set filters, widen them (years, genres, popularity): they may leave too few songs.", retry: true },
  bad_event: { title: "Something went wrong on our side", help: "It's not your photo. Please try again.", retry: true },
  no_tracks: { title: "No songs match those filters", help: "Widen the filters (years, genres, popularity) and try again." },
  network: { title: "Can't reach the moodtunes server", help: "Check your internet connection, then try again.", retry: true },
  internal_error: { title: "Something went wrong on our side", help: "It's not your photo. Please try again; if it keeps happening, come back later.", retry: true },
};
const GENERIC_ERROR = { title: "Something went wrong", help: "Please try again.", retry: true };

const state = {
  file: null, // File to send
  fileUrl: null, // object URL of it, for the previews
  token: 0, // bumps on each submit, so an older poll loop stops
  stream: null, // camera MediaStream
  job: null,
  modes: FALLBACK_MODES,
};

const prefersReducedMotion = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
};
const pct = (p, digits = 1) => `${(p * 100).toFixed(digits)}%`;
const fmtBytes = (n) => (n < 1024 * 1024 ? `${Math.max(1, Math.round(n / 1024))} KB` : `${(n / 1048576).toFixed(1)} MB`);
const emotionLabel = (e) => EMOTION_LABEL[e] || (e ? e[0].toUpperCase() + e.slice(1) : "Unknown");
const modeTitle = (m) => MODE_COPY[m]?.title || m;

// ───────────────────────── modes and filters ─────────────────────────

async function loadModes() {
  let modes = FALLBACK_MODES;
  let body = {};
  try {
    const res = await fetch(`${API}modes`, { headers: { Accept: "application/json" } });
    if (res.ok) body = (await res.json()) || {};
    if (Array.isArray(body.modes) && body.modes.length) {
      modes = body.modes.map((m) => (typeof m === "string" ? { name: m } : m)).filter((m) => m && m.name);
    }
  } catch { /* older server or offline: the three documented modes, the documented filters */ }
  state.modes = modes;
  renderModes(modes);
  applyFilters(body.filters ?? null);
  applyOptions(body);
  document.body.dataset.modesLoaded = "true";
}

function applyOptions(body) {
  // Playlist length bounds and the variety (diversity) slider, when the server describes them.
  const limit = body.limit;
  if (limit && typeof limit === "object") {
    const input = $("#limit");
    if (Number.isFinite(limit.min)) input.min = String(limit.min);
    if (Number.isFinite(limit.max)) input.max = String(limit.max);
    if (Number.isFinite(limit.default)) input.value = String(limit.default);
  }
  const div = body.diversity;
  const field = $('[data-filter="diversity"]');
  if (div && typeof div === "object" && Number.isFinite(div.default)) {
    const range = $("#diversity");
    range.min = String(div.min ?? 0);
    range.max = String(div.max ?? 1);
    range.value = String(div.default);
    range.dataset.default = String(div.default);
    field.hidden = false;
    range.dispatchEvent(new Event("input"));
  } else {
    field.hidden = true;
  }
}

function renderModes(modes) {
  const box = $("#mode-options");
  let saved = null;
  try { saved = localStorage.getItem("moodtunes.mode"); } catch { /* ignore */ }
  const names = modes.map((m) => m.name);
  const selected = names.includes(saved) ? saved : names.includes("match") ? "match" : names[0];
  box.replaceChildren(...modes.map((m) => {
    const copy = MODE_COPY[m.name] || { title: m.name, text: m.description || "" };
    const descId = `mode-${m.name}-desc`;
    const input = el("input", { type: "radio", name: "mode", value: m.name, id: `mode-${m.name}`,
      "data-testid": `mode-${m.name}`, "aria-describedby": descId, checked: m.name === selected });
    input.addEventListener("change", () => { try { localStorage.setItem("moodtunes.mode", m.name); } catch { /* */ } });
    const icon = `<svg class="mode-icon" viewBox="0 0 24 24" aria-hidden="true">${MODE_ICON[m.name] || MODE_ICON.match}</svg>`;
    const label = el("label", { class: "mode-card", for: `mode-${m.name}`, title: m.description || null });
    label.innerHTML = icon;
    label.append(el("span", { class: "mode-text" },
      el("span", { class: "mode-title", text: copy.title }),
      el("span", { class: "mode-desc", id: descId, text: copy.text })));
    return el("div", { class: "mode-option" }, input, label);
  }));
}

function applyFilters(filters) {
  // The server describes the filters it supports: {name: description} or [name | {name, ...}],
  // optionally with `options` for genres. Without that, offer the documented ones.
  let known = null;
  if (Array.isArray(filters)) known = new Map(filters.map((f) => (typeof f === "string" ? [f, {}] : [f.name, f])));
  else if (filters && typeof filters === "object") known = new Map(Object.entries(filters));
  for (const field of document.querySelectorAll("[data-filter]")) {
    const name = field.dataset.filter;
    if (name === "limit" || name === "diversity") continue;
    if (name === "exclude_explicit") {
      // Only worth offering when the catalogue actually flags explicit songs.
      const info = known?.get(name);
      const desc = typeof info === "string" ? info : info?.description || "";
      field.hidden = !info || /no explicit/i.test(desc);
    } else field.hidden = Boolean(known) && !known.has(name);
  }
  const genreInfo = known?.get("genres");
  const genres = (genreInfo && typeof genreInfo === "object" && (genreInfo.options || genreInfo.values)) || DEFAULT_GENRES;
  $("#genre-list").replaceChildren(...genres.slice(0, 200).map((g) => el("option", { value: String(g) })));
}

function collectForm() {
  const form = $("#job-form");
  const mode = form.querySelector('input[name="mode"]:checked')?.value || "match";
  const limit = Number($("#limit").value || 10);
  const filters = {};
  const yMin = $("#year-min").value.trim();
  const yMax = $("#year-max").value.trim();
  const genres = $("#genres").value.split(",").map((g) => g.trim()).filter(Boolean);
  const pop = Number($("#min-popularity").value);
  if (yMin && !$("#year-min").closest("[data-filter]").hidden) filters.year_min = yMin;
  if (yMax && !$("#year-max").closest("[data-filter]").hidden) filters.year_max = yMax;
  if (genres.length && !$("#genres").closest("[data-filter]").hidden) filters.genres = genres.join(",");
  if (pop > 0 && !$("#min-popularity").closest("[data-filter]").hidden) filters.min_popularity = String(pop);
  const div = $("#diversity");
  if (!div.closest("[data-filter]").hidden && div.value !== div.dataset.default) filters.diversity = div.value;
  if ($("#exclude-explicit").checked && !$("#exclude-explicit").closest("[data-filter]").hidden) filters.exclude_explicit = "true";
  return { mode, limit, filters };
}

// ───────────────────────── choosing a photo ─────────────────────────

function setFile(file) {
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.file = file;
  state.fileUrl = file ? URL.createObjectURL(file) : null;
  const preview = $("#preview");
  const img = $("#preview-img");
  if (!file) {
    preview.hidden = true;
    img.removeAttribute("src");
    showPanes(true);
    return;
  }
  preview.classList.remove("no-thumb");
  img.src = state.fileUrl;
  $("#preview-name").textContent = `${file.name || "photo"} · ${fmtBytes(file.size)}`;
  preview.hidden = false;
  showPanes(false);
  hideError();
}

function showPanes(show) {
  $(".tabs").hidden = !show;
  const active = $('[role="tab"][aria-selected="true"]').getAttribute("aria-controls");
  for (const pane of document.querySelectorAll('[role="tabpanel"]')) pane.hidden = !show || pane.id !== active;
}

function setupUpload() {
  const input = $("#photo-input");
  const zone = $("#drop-zone");
  input.addEventListener("change", () => { if (input.files[0]) setFile(input.files[0]); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const ev of ["dragleave", "dragend"]) zone.addEventListener(ev, () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = e.dataTransfer?.files?.[0];
    if (file) setFile(file);
  });
  // Don't let a photo dropped next to the box navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  // Paste an image from the clipboard (Ctrl/Cmd+V) anywhere on the page.
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) { e.preventDefault(); setFile(new File([file], file.name || "pasted-photo.png", { type: file.type })); }
  });
  $("#preview-img").addEventListener("error", () => {
    if (state.file) { $("#preview").classList.add("no-thumb"); $("#preview-img").alt = "No preview: this browser can't show this file"; }
  });
  $("#preview-img").addEventListener("load", () => { $("#preview-img").alt = "The photo you chose"; });
  $("#preview-clear").addEventListener("click", () => {
    setFile(null);
    const tab = $('[role="tab"][aria-selected="true"]');
    (tab.id === "tab-camera" ? $("#camera-start") : $("#photo-input")).focus();
  });
}

// ───────────────────────── tabs and camera ─────────────────────────

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab, focus = true) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
    }
    if (focus) tab.focus();
    if (tab.id !== "tab-camera") stopCamera();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (e) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      select(tabs[(next + tabs.length) % tabs.length]);
    });
  });
}

function cameraMessage(text, kind = "info") {
  const msg = $("#camera-message");
  msg.textContent = text;
  msg.dataset.kind = kind;
}

async function startCamera() {
  if (state.stream) { stopCamera(); return; }
  if (!window.isSecureContext) {
    cameraMessage("The camera only works on a secure page (https:// or localhost). Open moodtunes over https, or upload a photo instead.", "error");
    return;
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    cameraMessage("This browser can't use a camera here. Upload a photo instead.", "error");
    return;
  }
  cameraMessage("Asking for permission to use the camera…");
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 960 } }, audio: false });
  } catch (err) {
    const name = err?.name || "";
    const text = {
      NotAllowedError: "Camera access was blocked. Allow the camera for this site (the camera icon in the address bar or the browser's site settings), then press “Turn on camera” again, or upload a photo instead.",
      SecurityError: "Camera access was blocked by the browser's security settings. Upload a photo instead.",
      NotFoundError: "No camera was found. Connect a camera and try again, or upload a photo instead.",
      OverconstrainedError: "No suitable camera was found. Upload a photo instead.",
      NotReadableError: "The camera is in use by another app or can't be started. Close other apps using it and try again, or upload a photo instead.",
      AbortError: "The camera couldn't be started. Try again, or upload a photo instead.",
    }[name] || "The camera couldn't be started. Upload a photo instead.";
    cameraMessage(text, "error");
    state.stream = null;
    return;
  }
  const video = $("#camera-video");
  video.srcObject = state.stream;
  video.hidden = false;
  try { await video.play(); } catch { /* autoplay of muted video is allowed; ignore */ }
  $("#camera-capture").hidden = false;
  $("#camera-start").textContent = "Turn off camera";
  cameraMessage("Look at the camera, then press “Take photo”.");
  $("#camera-capture").focus();
}

function stopCamera() {
  if (state.stream) for (const t of state.stream.getTracks()) t.stop();
  state.stream = null;
  const video = $("#camera-video");
  video.srcObject = null;
  video.hidden = true;
  $("#camera-capture").hidden = true;
  $("#camera-start").textContent = "Turn on camera";
}

async function capture() {
  const video = $("#camera-video");
  if (!video.videoWidth) { cameraMessage("The camera isn't ready yet; try again in a moment.", "error"); return; }
  const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.92));
  stopCamera();
  cameraMessage("Photo taken. Press “Find my music”, or “Change photo” to take another.");
  setFile(new File([blob], "camera-photo.jpg", { type: "image/jpeg" }));
  $("#submit").focus();
}

function setupCamera() {
  $("#camera-start").addEventListener("click", startCamera);
  $("#camera-capture").addEventListener("click", capture);
  document.addEventListener("visibilitychange", () => { if (document.hidden) stopCamera(); });
}

// ───────────────────────── submit and progress ─────────────────────────

function show(which) {
  // which: "intro" | "progress" | "results" | "error" (error keeps progress visible)
  $("#intro").hidden = which !== "intro";
  $("#progress").hidden = !(which === "progress" || which === "results" || which === "error");
  $("#results").hidden = which !== "results";
  if (which !== "error") hideError();
}

function setStage(status, note = "") {
  const idx = status === "uploading" ? 0 : status === "done" ? STAGES.length : STAGES.indexOf(status);
  const items = document.querySelectorAll("#progress [data-stage]");
  if (status === "failed") {
    // Keep how far the job got; mark the step it stopped at.
    const current = [...items].find((li) => li.classList.contains("is-current")) || items[0];
    current.classList.add("is-failed");
  } else {
    items.forEach((li, i) => {
      li.classList.remove("is-failed");
      li.classList.toggle("is-done", i < idx);
      li.classList.toggle("is-current", i === idx);
      if (i === idx) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    });
  }
  $("#progress").dataset.status = status;
  const text = note || STAGE_TEXT[status] || "";
  if (text && $("#progress-text").textContent !== text) $("#progress-text").textContent = text;
}

function validate(form) {
  if (!state.file) return { code: "missing_image" };
  if (!Number.isInteger(form.limit) || form.limit < 1 || form.limit > 50) return { code: "invalid_limit" };
  const { year_min: a, year_max: b } = form.filters;
  if (a && b && Number(a) > Number(b)) return { code: "invalid_filters" };
  return null;
}

async function submit() {
  stopCamera();
  const form = collectForm();
  const problem = validate(form);
  if (problem) { showError(problem, { focus: true }); return; }
  const token = ++state.token;
  const body = new FormData();
  body.append("image", state.file, state.file.name || "photo.jpg");
  body.append("mode", form.mode);
  body.append("limit", String(form.limit));
  for (const [k, v] of Object.entries(form.filters)) body.append(k, v);
  // Who we are is the server's business: its session cookie (HttpOnly) comes back with each request.
  state.request = form;
  show("progress");
  setStage("uploading");
  $("#submit").setAttribute("aria-busy", "true");
  $("#submit").disabled = true;
  if (window.matchMedia("(max-width: 899px)").matches) {
    $("#progress").scrollIntoView({ behavior: prefersReducedMotion() ? "auto" : "smooth", block: "start" });
  }
  try {
    let res;
    try {
      res = await fetch(`${API}jobs`, { method: "POST", body, headers: { Accept: "application/json" } });
    } catch {
      showError({ code: "network" }, { focus: true });
      return;
    }
    const data = await res.json().catch(() => null);
    if (token !== state.token) return;
    if (!res.ok) { showError(apiError(res, data), { focus: true }); return; }
    await poll(data.id, token);
  } finally {
    if (token === state.token) {
      $("#submit").disabled = false;
      $("#submit").removeAttribute("aria-busy");
    }
  }
}

function apiError(res, data) {
  const err = data?.error || {};
  let code = err.code;
  if (!code) code = res.status === 413 ? "file_too_large" : res.status === 503 ? "queue_unavailable"
    : res.status === 429 ? "rate_limited" : res.status >= 500 ? "internal_error" : "invalid_request";
  if (code === "not_found" && res.status === 404) code = "job_not_found";
  return { code, message: err.message, details: err.details, status: res.status };
}

async function poll(id, token) {
  const started = performance.now();
  let delay = 250;
  let failures = 0;
  let lastStatus = null;
  while (token === state.token) {
    let res = null;
    let job = null;
    try {
      res = await fetch(`${API}jobs/${encodeURIComponent(id)}`, { cache: "no-store", headers: { Accept: "application/json" } });
      job = await res.json();
    } catch {
      res = null;
    }
    if (token !== state.token) return;
    if (!res || res.status === 503 || res.status === 502 || res.status === 504) {
      // Transient: keep the job, keep trying for a while before giving up.
      if (++failures > 15) { showError(res ? apiError(res, job) : { code: "network" }, { focus: true }); return; }
      setStage(lastStatus || "queued", "The service is busy; still trying…");
      await sleep(1500);
      continue;
    }
    failures = 0;
    if (!res.ok) { showError(apiError(res, job), { focus: true }); return; }
    state.job = job;
    if (job.status === "done") {
      setStage("done", `Done in ${((performance.now() - started) / 1000).toFixed(1)} s: ${job.recommendation?.tracks?.length ?? 0} songs for a ${emotionLabel(topEmotion(job)).toLowerCase()} face.`);
      renderResults(job);
      return;
    }
    if (job.status === "failed") {
      setStage("failed");
      showError(job.error || { code: "internal_error" }, { focus: true });
      return;
    }
    if (job.status !== lastStatus) { setStage(job.status); lastStatus = job.status; }
    if (performance.now() - started > POLL_TIMEOUT_MS) { showError({ code: "timeout" }, { focus: true }); return; }
    await sleep(delay);
    delay = Math.min(1000, delay * 1.25);
  }
}

// ───────────────────────── errors ─────────────────────────

function showError(info, { focus = false } = {}) {
  const code = info?.code || "internal_error";
  const copy = ERRORS[code] || { ...GENERIC_ERROR, help: info?.message ? `${info.message} Please try again.` : GENERIC_ERROR.help };
  const help = typeof copy.help === "function" ? copy.help(info || {}) : copy.help;
  const box = $("#error");
  box.dataset.code = code;
  $("#error-title").textContent = copy.title;
  $("#error-help").textContent = help;
  $("#error-code").textContent = info?.message ? `${code}: ${info.message}` : code;
  $("#error-retry").hidden = !(copy.retry && state.file);
  $("#error-shrink").hidden = !(copy.shrink && state.file);
  $("#intro").hidden = true;
  $("#results").hidden = true;
  const pending = ["missing_image", "invalid_limit", "invalid_filters"].includes(code);
  $("#progress").hidden = pending; // validation problems never reached the server
  if (!pending) setStage("failed", `Stopped: ${copy.title.toLowerCase()}.`);
  box.hidden = false;
  $("#submit").disabled = false;
  $("#submit").removeAttribute("aria-busy");
  if (focus) {
    box.focus({ preventScroll: true });
    box.scrollIntoView({ behavior: prefersReducedMotion() ? "auto" : "smooth", block: "nearest" });
  }
}

function hideError() {
  $("#error").hidden = true;
}

async function shrinkAndRetry() {
  const file = state.file;
  if (!file) return;
  try {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const scale = Math.min(1, 2048 / Math.max(bitmap.width, bitmap.height));
    const w = Math.round(bitmap.width * scale);
    const h = Math.round(bitmap.height * scale);
    const canvas = el("canvas", { width: w, height: h });
    canvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
    const blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.9));
    const name = (file.name || "photo").replace(/\.[^.]+$/, "") + "-small.jpg";
    setFile(new File([blob], name, { type: "image/jpeg" }));
  } catch {
    showError({ code: "invalid_image", message: "This browser couldn't shrink the photo." }, { focus: true });
    return;
  }
  submit();
}

// ───────────────────────── results ─────────────────────────

function topEmotion(job) {
  const face = job.faces?.[job.chosen_face ?? 0];
  if (face?.emotion) return face.emotion;
  const probs = job.recommendation?.emotion_probabilities || {};
  return Object.keys(probs).sort((a, b) => probs[b] - probs[a])[0];
}

function orderedEmotions(probs) {
  return [...EMOTIONS.filter((e) => e in probs), ...Object.keys(probs).filter((e) => !EMOTIONS.includes(e))];
}

function renderResults(job) {
  show("results");
  renderPhoto(job);
  renderEmotions(job);
  renderPlaylist(job);
  renderWhy(job);
  const heading = $("#seen-heading");
  heading.focus({ preventScroll: true });
  heading.scrollIntoView({ behavior: prefersReducedMotion() ? "auto" : "smooth", block: "start" });
}

function renderPhoto(job) {
  const img = $("#result-img");
  const layer = $("#face-layer");
  const faces = job.faces || [];
  const chosen = job.chosen_face ?? 0;
  img.src = state.fileUrl;
  img.alt = `Your photo, with ${faces.length} face${faces.length === 1 ? "" : "s"} boxed`;
  const place = () => {
    // Boxes are in pixels of the upright (EXIF-rotated) image; percentages scale them to any displayed size.
    const W = job.image?.width || img.naturalWidth;
    const H = job.image?.height || img.naturalHeight;
    layer.replaceChildren(...faces.map((f, i) => {
      const b = f.box;
      const isChosen = i === chosen;
      const tag = isChosen ? `${emotionLabel(f.emotion)} ${pct(f.confidence, 0)}`
        : `Face ${i + 1}: ${emotionLabel(f.emotion)}`;
      return el("div", {
        class: `face-box${isChosen ? " is-chosen" : ""}`, "data-testid": "face-box", "data-chosen": String(isChosen),
        "aria-hidden": "true",
        style: `left:${(b.x / W) * 100}%;top:${(b.y / H) * 100}%;width:${(b.width / W) * 100}%;height:${(b.height / H) * 100}%`,
      }, el("span", { class: `face-tag${b.y / H < 0.12 ? " below" : ""}${(b.x + b.width / 2) / W > 0.6 ? " end" : ""}`, text: tag }));
    }));
  };
  if (job.image?.width && job.image?.height) place();
  else img.addEventListener("load", place, { once: true });
  const n = faces.length;
  $("#faces-caption").textContent = n <= 1
    ? `We found one face. It reads as ${emotionLabel(faces[0]?.emotion).toLowerCase()}.`
    : `We found ${n} faces. The highlighted one (face ${chosen + 1}) chose the music; the others are shown dashed. `
      + faces.map((f, i) => `Face ${i + 1}: ${emotionLabel(f.emotion).toLowerCase()} (${pct(f.confidence, 0)}).`).join(" ");
}

function renderEmotions(job) {
  const face = job.faces?.[job.chosen_face ?? 0];
  const probs = job.recommendation?.emotion_probabilities || face?.probabilities || {};
  const top = topEmotion(job);
  const conf = face?.confidence ?? probs[top] ?? 0;
  $("#emotion-headline").replaceChildren(
    el("span", { class: "headline-label", text: "Mood " }),
    el("span", { class: `headline-emotion emo-${top}`, "data-testid": "emotion-top", text: emotionLabel(top) }),
    el("span", { class: "headline-conf", text: ` ${pct(conf, 0)} sure` }));
  $("#emotion-chart").replaceChildren(...orderedEmotions(probs).map((e) => {
    const p = Math.max(0, Math.min(1, Number(probs[e]) || 0));
    const labelId = `emo-label-${e}`;
    return el("li", { class: `bar-row emo-${e}${e === top ? " is-top" : ""}`, "data-testid": "emotion-bar", "data-emotion": e, "data-value": p.toFixed(4) },
      el("span", { class: "bar-label", id: labelId, text: emotionLabel(e) }),
      el("span", { class: "bar-track", role: "meter", "aria-labelledby": labelId, "aria-valuemin": "0", "aria-valuemax": "100",
        "aria-valuenow": (p * 100).toFixed(1), "aria-valuetext": pct(p) },
        el("span", { class: "bar-fill", style: `width:${(p * 100).toFixed(2)}%` })),
      el("span", { class: "bar-value", "data-testid": "emotion-value", "aria-hidden": "true", text: pct(p) }));
  }));
  const m = job.model;
  $("#model-info").textContent = m ? `Model: ${m.name}${m.version ? ` v${m.version}` : ""}${m.head ? ` · ${m.head}` : ""}` : "";
}

function filtersSummary(req) {
  if (!req) return "";
  const f = req.filters || {};
  const parts = [];
  if (f.year_min || f.year_max) parts.push(f.year_min && f.year_max ? `${f.year_min}–${f.year_max}` : f.year_min ? `from ${f.year_min}` : `up to ${f.year_max}`);
  if (f.genres) parts.push(f.genres.replaceAll(",", ", "));
  if (f.min_popularity) parts.push(`popularity ≥ ${f.min_popularity}`);
  if (f.exclude_explicit) parts.push("no explicit songs");
  return parts.join(" · ");
}

const ICON_UP = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M7 11v9H4v-9zM7 11l4-8a2.5 2.5 0 0 1 2.5 2.5V9h5.3a2 2 0 0 1 2 2.3l-1.2 7A2 2 0 0 1 17.6 20H7"/></svg>';
const ICON_DOWN = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M7 13V4H4v9zM7 13l4 8a2.5 2.5 0 0 0 2.5-2.5V15h5.3a2 2 0 0 0 2-2.3l-1.2-7A2 2 0 0 0 17.6 4H7"/></svg>';
const ICON_OPEN = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M14 4h6v6M20 4l-9 9M18 14v5a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V7a1 1 0 0 1 1-1h5"/></svg>';

function renderPlaylist(job) {
  const rec = job.recommendation || {};
  const tracks = rec.tracks || [];
  const mode = rec.mode || job.mode;
  const summary = filtersSummary(state.request);
  $("#playlist-sub").textContent = `${tracks.length} song${tracks.length === 1 ? "" : "s"} · ${modeTitle(mode)}${summary ? ` · ${summary}` : ""}`;
  const list = $("#playlist");
  if (!tracks.length) {
    list.replaceChildren(el("li", { class: "empty", text: "No songs matched. Widen the filters and try again." }));
    return;
  }
  list.replaceChildren(...tracks.map((t, i) => {
    const f = t.features || {};
    const artists = (t.artists || []).join(", ") || "Unknown artist";
    const meta = el("p", { class: "track-meta" },
      el("span", { class: "track-artists", "data-testid": "track-artists", text: artists }),
      t.year ? el("span", { class: "track-year", "data-testid": "track-year", text: String(t.year) }) : null,
      t.genre ? el("span", { class: "chip", text: t.genre.split(";")[0].trim() }) : null);
    const feats = el("p", { class: "track-feats", "aria-label": "Sound" },
      ...[["Positivity", f.valence], ["Energy", f.energy]].filter(([, v]) => v !== undefined)
        .map(([k, v]) => el("span", { class: "feat" }, `${k} `, el("b", { text: Number(v).toFixed(2) }))),
      f.tempo !== undefined ? el("span", { class: "feat" }, el("b", { text: String(Math.round(f.tempo)) }), " BPM") : null,
      f.mode !== undefined ? el("span", { class: "feat feat-mode", text: f.mode >= 0.5 ? "major key" : "minor key" }) : null);
    const title = el("p", { class: "track-title", "data-testid": "track-title", text: t.name || t.track_id });
    const actions = el("div", { class: "track-actions" });
    if (t.spotify_url) {
      const a = el("a", { class: "spotify-link", href: t.spotify_url, target: "_blank", rel: "noopener noreferrer", "data-testid": "spotify-link" });
      a.innerHTML = `${ICON_OPEN}<span>Open in Spotify</span>`;
      a.append(el("span", { class: "visually-hidden", text: `: ${t.name} (opens in a new tab)` }));
      actions.append(a);
    }
    const like = el("button", { type: "button", class: "vote-btn like", "data-testid": "like-button", "aria-pressed": "false", "aria-label": `Like ${t.name}`, title: "Like" });
    like.innerHTML = ICON_UP;
    const dislike = el("button", { type: "button", class: "vote-btn dislike", "data-testid": "dislike-button", "aria-pressed": "false", "aria-label": `Dislike ${t.name}`, title: "Dislike" });
    dislike.innerHTML = ICON_DOWN;
    const status = el("p", { class: "feedback-status", "data-testid": "feedback-status", role: "status", "aria-live": "polite" });
    const item = el("li", { class: "track", "data-testid": "track", "data-track-id": t.track_id },
      el("span", { class: "track-num", "aria-hidden": "true", text: String(i + 1) }),
      el("div", { class: "track-main" }, title, meta, feats),
      actions);
    actions.append(el("div", { class: "vote", role: "group", "aria-label": `Feedback on ${t.name}` }, like, dislike));
    item.append(status);
    like.addEventListener("click", () => sendFeedback(job.id, t, true, { like, dislike, status, item }));
    dislike.addEventListener("click", () => sendFeedback(job.id, t, false, { like, dislike, status, item }));
    return item;
  }));
}

async function sendFeedback(jobId, track, liked, ui) {
  const pressed = liked ? ui.like : ui.dislike;
  if (pressed.getAttribute("aria-pressed") === "true") return;
  ui.like.disabled = ui.dislike.disabled = true;
  ui.status.dataset.kind = "pending";
  ui.status.textContent = "Saving…";
  let res = null;
  let data = null;
  try {
    res = await fetch(`${API}jobs/${encodeURIComponent(jobId)}/feedback`, {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ track_id: track.track_id, liked }),
    });
    data = await res.json().catch(() => null);
  } catch { /* network */ }
  ui.like.disabled = ui.dislike.disabled = false;
  if (res && res.ok) {
    ui.like.setAttribute("aria-pressed", String(liked));
    ui.dislike.setAttribute("aria-pressed", String(!liked));
    ui.item.classList.toggle("is-disliked", !liked);
    ui.item.classList.toggle("is-liked", liked);
    ui.status.dataset.kind = "ok";
    ui.status.textContent = liked ? "Thanks! Liked." : "Got it: we won't suggest this song to you again in this mode.";
    return;
  }
  ui.status.dataset.kind = "error";
  const code = data?.error?.code;
  let text;
  if (!res) text = "Couldn't save your feedback: the server can't be reached. Try again.";
  else if (code === "job_not_found") text = "This playlist has expired on the server, so feedback can't be saved. Make a new one.";
  else if (res.status === 404 || res.status === 405) text = "Feedback isn't available on this server yet, sorry.";
  else if (code === "job_not_done") text = "This playlist isn't finished yet; try again in a moment.";
  else if (code === "unknown_track") text = "This song isn't part of the playlist any more; feedback wasn't saved.";
  else if (res.status === 503) text = "The service is busy; your feedback wasn't saved. Try again in a moment.";
  else if (res.status === 429) text = "That was a lot of ratings in a short time; wait a minute and try again.";
  else text = `Couldn't save your feedback${data?.error?.message ? ` (${data.error.message})` : ""}. Try again.`;
  ui.status.textContent = text;
}

function featureValue(key, v) {
  if (v === undefined || v === null || Number.isNaN(v)) return "–";
  if (key === "tempo") return `${Math.round(v)} BPM`;
  if (key === "mode") return pct(v, 0);
  return Number(v).toFixed(2);
}

function renderWhy(job) {
  const rec = job.recommendation || {};
  const tracks = rec.tracks || [];
  const target = rec.target || {};
  const mean = { ...(rec.playlist_mean || {}) };
  for (const { key } of FEATURES) {
    if (typeof mean[key] === "number") continue;
    const vals = tracks.map((t) => Number(t.features?.[key])).filter((v) => !Number.isNaN(v));
    mean[key] = vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : undefined;
  }
  const path = pathPoints(rec);
  const journey = new Set(path.map((p) => `${p.valence.toFixed(3)},${p.energy.toFixed(3)}`)).size > 1;
  $("#why-note").textContent = journey
    ? "This mode is a journey: the first songs meet your current mood and the playlist moves step by step toward the target, so the average sits between the two."
    : "The target is the sound we aimed for from the emotion; the bars show how close the playlist came.";
  const norm = (key, v) => Math.max(0, Math.min(1, key === "tempo" ? v / TEMPO_SCALE : v));
  $("#features").replaceChildren(...FEATURES.flatMap(({ key, label, hint }) => {
    const t = target[key];
    const m = mean[key];
    const bar = el("span", { class: "cmp-track", "aria-hidden": "true" });
    if (m !== undefined) bar.append(el("span", { class: "cmp-fill", style: `width:${norm(key, m) * 100}%` }));
    if (t !== undefined) bar.append(el("span", { class: "cmp-target", style: `left:${norm(key, t) * 100}%` }));
    return [
      el("dt", { class: "cmp-label" }, el("span", { text: label }), el("small", { text: hint })),
      el("dd", { class: "cmp-row", "data-testid": "feature-row", "data-feature": key }, bar,
        el("span", { class: "cmp-values" },
          el("span", { class: "cmp-t", text: `Target ${featureValue(key, t)}` }),
          el("span", { class: "cmp-m", text: `Playlist ${featureValue(key, m)}` }))),
    ];
  }));
  $("#mood-map").replaceChildren(moodMap(rec, tracks));
  $("#map-caption").textContent = journey
    ? "Each numbered dot is a song, in playlist order, moving from your current mood toward the goal (the ring)."
    : "Each numbered dot is a song, in playlist order. The ring is the target sound for your mood.";
}

function pathPoints(rec) {
  // Optional per-position targets (uplift's path), in whatever shape the server sends.
  const raw = rec.path || rec.targets || rec.target_path;
  if (!Array.isArray(raw)) return [];
  return raw.map((p) => {
    if (Array.isArray(p)) return { valence: p[2], energy: p[1] };
    const q = p.target || p;
    return { valence: q.valence, energy: q.energy };
  }).filter((p) => typeof p.valence === "number" && typeof p.energy === "number");
}

function moodMap(rec, tracks) {
  const NS = "http://www.w3.org/2000/svg";
  const S = 300, P = 28, span = S - 2 * P;
  const X = (v) => P + Math.max(0, Math.min(1, v)) * span;
  const Y = (e) => S - P - Math.max(0, Math.min(1, e)) * span;
  const svg = document.createElementNS(NS, "svg");
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  svg.setAttribute("viewBox", `0 0 ${S} ${S}`);
  svg.setAttribute("role", "img");
  const target = rec.target || {};
  const vals = tracks.map((t) => t.features?.valence).filter((v) => typeof v === "number");
  const ens = tracks.map((t) => t.features?.energy).filter((v) => typeof v === "number");
  const range = (a) => (a.length ? `${Math.min(...a).toFixed(2)} to ${Math.max(...a).toFixed(2)}` : "n/a");
  const desc = `Mood map of positivity (left to right) and energy (bottom to top). Target: positivity ${featureValue("valence", target.valence)}, energy ${featureValue("energy", target.energy)}. Songs: positivity ${range(vals)}, energy ${range(ens)}.`;
  svg.setAttribute("aria-label", desc);
  svg.append(node("title", {}, desc));
  svg.append(node("rect", { x: P, y: P, width: span, height: span, class: "map-bg", rx: 8 }));
  const quads = [
    ["Tense", P + 8, P + 18, "start"], ["Joyful", S - P - 8, P + 18, "end"],
    ["Sad", P + 8, S - P - 10, "start"], ["Calm", S - P - 8, S - P - 10, "end"],
  ];
  svg.append(node("line", { x1: X(0.5), y1: P, x2: X(0.5), y2: S - P, class: "map-grid" }));
  svg.append(node("line", { x1: P, y1: Y(0.5), x2: S - P, y2: Y(0.5), class: "map-grid" }));
  for (const [t, x, y, anchor] of quads) svg.append(node("text", { x, y, "text-anchor": anchor, class: "map-quad" }, t));
  svg.append(node("text", { x: S / 2, y: S - 6, "text-anchor": "middle", class: "map-axis" }, "positivity →"));
  svg.append(node("text", { x: 12, y: S / 2, "text-anchor": "middle", class: "map-axis", transform: `rotate(-90 12 ${S / 2})` }, "energy →"));
  const path = pathPoints(rec);
  if (path.length > 1) {
    svg.append(node("polyline", { points: path.map((p) => `${X(p.valence)},${Y(p.energy)}`).join(" "), class: "map-target-path" }));
  }
  const pts = tracks.filter((t) => typeof t.features?.valence === "number" && typeof t.features?.energy === "number");
  if (pts.length > 1) {
    svg.append(node("polyline", { points: pts.map((t) => `${X(t.features.valence)},${Y(t.features.energy)}`).join(" "), class: "map-path" }));
  }
  const journey = path.length > 1 && Math.hypot(path[0].valence - path.at(-1).valence, path[0].energy - path.at(-1).energy) > 0.02;
  const label = (text, x, y) => {
    // Keep the label inside the plot: put it on whichever side has room.
    const right = x < S - P - 50;
    svg.append(node("text", { x: right ? x + 18 : x - 18, y: y + 4, "text-anchor": right ? "start" : "end", class: "map-label" }, text));
  };
  // Mark where the journey starts unless it starts right at the goal (the labels would collide).
  if (journey && Math.hypot(path[0].valence - (target.valence ?? 0), path[0].energy - (target.energy ?? 0)) > 0.12) {
    const s0 = path[0];
    svg.append(node("rect", { x: X(s0.valence) - 6, y: Y(s0.energy) - 6, width: 12, height: 12, rx: 2, class: "map-start", transform: `rotate(45 ${X(s0.valence)} ${Y(s0.energy)})` }));
    label("your mood", X(s0.valence), Y(s0.energy) + 14);
  }
  if (typeof target.valence === "number" && typeof target.energy === "number") {
    svg.append(node("circle", { cx: X(target.valence), cy: Y(target.energy), r: 14, class: "map-target" }));
    svg.append(node("circle", { cx: X(target.valence), cy: Y(target.energy), r: 3, class: "map-target-dot" }));
    label(journey ? "goal" : "target", X(target.valence), Y(target.energy) - 14);
  }
  // Later songs first, so song 1 is drawn on top when dots overlap.
  [...pts].reverse().forEach((t) => {
    const n = tracks.indexOf(t) + 1;
    const g = node("g", { class: "map-dot" });
    g.append(node("circle", { cx: X(t.features.valence), cy: Y(t.features.energy), r: 8.5 }));
    g.append(node("text", { x: X(t.features.valence), y: Y(t.features.energy) + 3.5, "text-anchor": "middle" }, String(n)));
    svg.append(g);
  });
  return svg;
}

// ───────────────────────── start ─────────────────────────

function setupForm() {
  $("#job-form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("#error-retry").addEventListener("click", submit);
  $("#error-shrink").addEventListener("click", shrinkAndRetry);
  $("#again").addEventListener("click", () => {
    state.token++;
    setFile(null);
    show("intro");
    $("#progress").hidden = true;
    window.scrollTo({ top: 0, behavior: prefersReducedMotion() ? "auto" : "smooth" });
    $("#photo-input").focus({ preventScroll: true });
  });
  const range = $("#min-popularity");
  const out = $("#min-popularity-out");
  const update = () => { out.textContent = Number(range.value) > 0 ? range.value : "any"; };
  range.addEventListener("input", update);
  update();
  const div = $("#diversity");
  const divOut = $("#diversity-out");
  const describe = () => {
    const v = Number(div.value);
    divOut.textContent = v <= 0.1 ? "closest matches" : v < 0.45 ? "balanced" : v < 0.75 ? "varied" : "very varied";
    div.setAttribute("aria-valuetext", `${divOut.textContent} (${v.toFixed(2)})`);
  };
  div.addEventListener("input", describe);
  describe();
}

setupTabs();
setupUpload();
setupCamera();
setupForm();
loadModes();
