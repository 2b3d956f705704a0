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

// What likes and dislikes do, in one place: the recommender leaves a song this listener (this
// browser's session) disliked out of later playlists in the same mode, and the latest opinion on a
// song wins. Likes are stored but do not change any playlist yet. Update this when that changes.
const FEEDBACK_COPY = {
  note: "Dislike a song and it won't be suggested to you again in this mode (on this browser). "
    + "Like songs and your next playlists in this mode lean toward their sound (more likes, stronger pull, "
    + "never more than halfway from your mood). Changed your mind? Press the button again to undo.",
  liked: "Thanks! Liked: your next playlists in this mode lean toward songs like this.",
  undone: "Undone: this song no longer counts for your next playlists.",
  disliked: (mode) => `Got it: we won't suggest this song to you again in “${modeTitle(mode)}”.`,
  excluded: (n) => `${n} song${n === 1 ? "" : "s"} you disliked left out`,
};

// Photo files the page checks before sending: the server's list (GET /v1/modes `upload`) wins; this
// is the documented one, for an older server. Sizes are only checked when the server states them.
const DEFAULT_FORMATS = ["image/jpeg", "image/png", "image/webp", "image/tiff"];
const FORMAT_NAME = { "image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP", "image/tiff": "TIFF",
  "image/gif": "GIF", "image/bmp": "BMP", "image/heic": "HEIC (iPhone)", "image/avif": "AVIF", "image/svg+xml": "SVG" };
const BROWSER_DECODES = new Set(["image/jpeg", "image/png", "image/webp"]); // a failed preview = a damaged file
const MIN_PHOTO_PX = 240; // small photos are shown at least this big (longer side), never at 20 px

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
  file_too_large: { title: "That photo is too big", ...SHRINK, help: (i) => `${i.size ? `It is ${fmtBytes(i.size)}` : "It is over the limit"}${state.upload.maxBytes ? `; the limit is ${fmtLimit(state.upload.maxBytes)}` : ""}.${i.local ? " Nothing has been sent." : ""} Use the button below to shrink it here in your browser, or choose a smaller photo.` },
  image_too_many_pixels: { title: "That photo has too many pixels", ...SHRINK, help: (i) => `${i.local && i.width ? `It is ${i.width} × ${i.height} pixels. Nothing has been sent. ` : ""}Use the button below to shrink it here in your browser, or choose a smaller photo.` },
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
  upload: { maxBytes: null, maxPixels: null, maxSide: null, formats: DEFAULT_FORMATS },
  pick: 0, // bumps on each chosen file, so an older file check is dropped
  checking: null, // Promise of the current file check (submit waits for it)
  tooBig: null, // the chosen file's size or pixel problem, found before sending
  tagObserver: null, // re-places the face tags when the photo is resized
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
const fmtLimit = (n) => (n % 1048576 === 0 ? `${n / 1048576} MB` : fmtBytes(n));
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
  // Upload limits: the page refuses what the server would refuse, before sending anything.
  const up = body.upload;
  if (up && typeof up === "object") {
    const num = (v) => (Number.isFinite(v) && v > 0 ? v : null);
    state.upload.maxBytes = num(up.max_bytes);
    state.upload.maxPixels = num(up.max_pixels);
    state.upload.maxSide = num(up.max_side);
    if (Array.isArray(up.formats) && up.formats.length) state.upload.formats = up.formats.map(String);
    if (state.upload.maxBytes) $("#drop-limit").textContent = `, up to ${fmtLimit(state.upload.maxBytes)}`;
  }
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

async function sniff(file) {
  // The file's real type from its first bytes (its name and the browser's guess can lie).
  const b = new Uint8Array(await file.slice(0, 32).arrayBuffer());
  const at = (i, ...xs) => xs.every((x, k) => b[i + k] === x);
  const ascii = (i, n) => String.fromCharCode(...b.slice(i, i + n));
  if (at(0, 0xff, 0xd8, 0xff)) return "image/jpeg";
  if (at(0, 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return "image/png";
  if (ascii(0, 4) === "RIFF" && ascii(8, 4) === "WEBP") return "image/webp";
  if (at(0, 0x49, 0x49, 0x2a, 0x00) || at(0, 0x4d, 0x4d, 0x00, 0x2a)) return "image/tiff";
  if (ascii(0, 4) === "GIF8") return "image/gif";
  if (ascii(0, 2) === "BM" && b.length >= 26) return "image/bmp";
  if (ascii(4, 4) === "ftyp") {
    const brand = ascii(8, 4);
    if (/^(heic|heix|hevc|heim|heis|mif1|msf1)$/.test(brand)) return "image/heic";
    if (/^avi[fs]$/.test(brand)) return "image/avif";
  }
  if (/^\s*<(\?xml|svg)/i.test(ascii(0, 32)) && file.type === "image/svg+xml") return "image/svg+xml";
  return null;
}

async function checkFile(file) {
  // -> {problem} for a file the server would refuse whatever its size, else {kind}.
  if (!file.size) return { problem: { code: "empty_file", local: true } };
  let kind = null;
  try { kind = await sniff(file); } catch { return { problem: { code: "invalid_image", local: true, message: "This browser couldn't read the file." } }; }
  const name = file.name ? `“${file.name}”` : "This file";
  if (!kind) return { problem: { code: "invalid_image", local: true, message: `${name} isn't a photo (checked here in your browser: nothing was sent).` } };
  if (!state.upload.formats.includes(kind)) {
    return { problem: { code: "unsupported_image_format", local: true, message: `${name} is a ${FORMAT_NAME[kind] || kind} image (checked here in your browser: nothing was sent).` } };
  }
  return { kind };
}

function sizeProblem(file, width, height) {
  const { maxBytes, maxPixels, maxSide } = state.upload;
  if (maxBytes && file.size > maxBytes) return { code: "file_too_large", size: file.size, local: true };
  if (width && ((maxPixels && width * height > maxPixels) || (maxSide && Math.max(width, height) > maxSide))) {
    return { code: "image_too_many_pixels", width, height, local: true };
  }
  return null;
}

function chooseFile(file) {
  // Every way in (picker, drop, paste, camera, shrink) comes here: the file is checked in the
  // browser first; a file the server would refuse is never sent, nor shown as a broken picture.
  const pick = ++state.pick;
  stopLive("you chose a photo instead");
  hideError();
  state.checking = (async () => {
    const { problem, kind } = await checkFile(file);
    if (pick !== state.pick) return false;
    if (problem) {
      setFile(null);
      showError(problem, { focus: true });
      return false;
    }
    setFile(file);
    let width = 0, height = 0;
    const img = $("#preview-img");
    try {
      await img.decode();
      width = img.naturalWidth; height = img.naturalHeight;
    } catch {
      if (pick !== state.pick) return false;
      if (BROWSER_DECODES.has(kind)) { // every browser shows these: a failure means a damaged file
        setFile(null);
        showError({ code: "invalid_image", local: true, message: `${file.name ? `“${file.name}”` : "This file"} looks like a ${FORMAT_NAME[kind]} photo but is damaged or incomplete (checked here in your browser: nothing was sent).` }, { focus: true });
        return false;
      }
      noThumb(kind);
    }
    if (pick !== state.pick) return false;
    $("#preview").classList.toggle("is-tiny", Boolean(width) && Math.max(width, height) < MIN_PHOTO_PX / 2);
    $("#preview").hidden = false;
    state.tooBig = sizeProblem(file, width, height);
    if (state.tooBig) { showError(state.tooBig, { focus: true }); return false; }
    return true;
  })();
  const checking = state.checking;
  checking.then(() => { if (state.checking === checking) state.checking = null; });
  return checking;
}

function noThumb(kind) {
  $("#preview").classList.add("no-thumb");
  $("#preview-none").textContent = `No preview: this browser can't show ${FORMAT_NAME[kind] || "this kind of"} images. The server can still read it.`;
}

function setFile(file) {
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.file = file;
  state.fileUrl = file ? URL.createObjectURL(file) : null;
  state.tooBig = null;
  const preview = $("#preview");
  const img = $("#preview-img");
  preview.hidden = true; // shown once the picture is decoded (chooseFile): no broken-image flash
  preview.classList.remove("no-thumb", "is-tiny");
  if (!file) {
    state.pick++;
    img.removeAttribute("src");
    showPanes(true);
    updateSubmitRow();
    return;
  }
  img.src = state.fileUrl;
  $("#preview-name").textContent = `${file.name || "photo"} · ${fmtBytes(file.size)}`;
  showPanes(false);
  updateSubmitRow();
}

function updateSubmitRow() {
  // On the live tab (and no photo chosen) the live buttons are the way in, not "Find my music".
  const liveTab = $("#tab-live")?.getAttribute("aria-selected") === "true";
  $(".submit-row").hidden = liveTab && !state.file;
}

function showPanes(show) {
  $(".tabs").hidden = !show;
  const active = $('[role="tab"][aria-selected="true"]').getAttribute("aria-controls");
  for (const pane of document.querySelectorAll('[role="tabpanel"]')) pane.hidden = !show || pane.id !== active;
}

function setupUpload() {
  const input = $("#photo-input");
  const zone = $("#drop-zone");
  input.addEventListener("change", () => { if (input.files[0]) chooseFile(input.files[0]); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const ev of ["dragleave", "dragend"]) zone.addEventListener(ev, () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = e.dataTransfer?.files?.[0];
    if (file) chooseFile(file);
  });
  // Don't let a photo dropped next to the box navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  // Paste an image from the clipboard (Ctrl/Cmd+V) anywhere on the page.
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) { e.preventDefault(); chooseFile(new File([file], file.name || "pasted-photo.png", { type: file.type })); }
  });
  $("#preview-clear").addEventListener("click", () => {
    setFile(null);
    hideError();
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
    if (tab.id !== "tab-live") stopLive("you switched to a single photo");
    updateSubmitRow();
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
  await chooseFile(new File([blob], "camera-photo.jpg", { type: "image/jpeg" }));
  $("#submit").focus();
}

function setupCamera() {
  $("#camera-start").addEventListener("click", startCamera);
  $("#camera-capture").addEventListener("click", capture);
  document.addEventListener("visibilitychange", () => { if (document.hidden) stopCamera(); });
}

// ───────────────────────── submit and progress ─────────────────────────

function show(which) {
  // which: "intro" | "progress" | "results" | "error" (error keeps progress visible) | "live"
  $("#intro").hidden = which !== "intro";
  $("#live").hidden = which !== "live";
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
  if (state.tooBig) return state.tooBig;
  if (!Number.isInteger(form.limit) || form.limit < 1 || form.limit > 50) return { code: "invalid_limit" };
  const { year_min: a, year_max: b } = form.filters;
  if (a && b && Number(a) > Number(b)) return { code: "invalid_filters" };
  return null;
}

async function submit() {
  stopCamera();
  stopLive("you sent a photo instead");
  // A file still being checked: wait; if it is refused, its message is what the user needs to see.
  if (state.checking && !(await state.checking) && !state.file) return;
  const form = collectForm();
  const problem = validate(form);
  if (problem) { showError(problem, { focus: true }); return; }
  const token = ++state.token;
  const body = new FormData();
  body.append("image", state.file, state.file.name || "photo.jpg");
  body.append("mode", form.mode);
  body.append("limit", String(form.limit));
  for (const [k, v] of Object.entries(form.filters)) body.append(k, v);
  if ($("#drive-group").checked) body.append("drive", "group");
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
  let help = typeof copy.help === "function" ? copy.help(info || {}) : copy.help;
  if (info?.local && info.message) help = `${info.message} ${help}`; // found here: say exactly what
  const box = $("#error");
  box.dataset.code = code;
  $("#error-title").textContent = copy.title;
  $("#error-help").textContent = help;
  $("#error-code").textContent = info?.message && !info.local ? `${code}: ${info.message}` : code;
  $("#error-retry").hidden = !(copy.retry && state.file);
  $("#error-shrink").hidden = !(copy.shrink && state.file);
  $("#intro").hidden = true;
  $("#results").hidden = true;
  $("#live").hidden = true;
  const pending = Boolean(info?.local) || ["missing_image", "invalid_limit", "invalid_filters"].includes(code);
  $("#progress").hidden = pending; // problems found in the browser never reached the server
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
    if (!(await chooseFile(new File([blob], name, { type: "image/jpeg" })))) return;
  } catch {
    showError({ code: "invalid_image", local: true, message: "This browser couldn't shrink the photo." }, { focus: true });
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
    // A small photo is scaled up (its longer side to MIN_PHOTO_PX), a tiny one with sharp pixels.
    const k = W && H ? MIN_PHOTO_PX / Math.max(W, H) : 1;
    img.style.width = k > 1 ? `${Math.round(W * k)}px` : "";
    img.classList.toggle("is-small", k > 1);
    img.classList.toggle("is-tiny", k >= 3);
    layer.replaceChildren(...faces.map((f, i) => {
      const b = f.box;
      const isChosen = i === chosen;
      const tag = isChosen ? `${emotionLabel(f.emotion)} ${pct(f.confidence, 0)}`
        : `Face ${i + 1}: ${emotionLabel(f.emotion)}`;
      return el("div", {
        class: `face-box${isChosen ? " is-chosen" : ""}`, "data-testid": "face-box", "data-chosen": String(isChosen),
        "aria-hidden": "true",
        style: `left:${(b.x / W) * 100}%;top:${(b.y / H) * 100}%;width:${(b.width / W) * 100}%;height:${(b.height / H) * 100}%`,
      }, el("span", { class: "face-tag", "data-testid": "face-tag", text: tag }));
    }));
    delete layer.dataset.tagsPlaced;
    placeFaceTags();
  };
  if (job.image?.width && job.image?.height) place();
  else img.addEventListener("load", place, { once: true });
  // The tags are placed in pixels: again whenever the photo's displayed size changes.
  state.tagObserver?.disconnect();
  state.tagObserver = new ResizeObserver(() => placeFaceTags());
  state.tagObserver.observe(layer);
  const n = faces.length;
  $("#faces-caption").textContent = n <= 1
    ? `We found one face. It reads as ${emotionLabel(faces[0]?.emotion).toLowerCase()}.`
    : (job.recommendation?.drive === "group" || job.drive === "group"
      ? `We found ${n} faces. Every face counted for the music, clearer faces more. `
      : `We found ${n} faces. The highlighted one (face ${chosen + 1}) chose the music; the others are shown dashed. `)
      + faces.map((f, i) => `Face ${i + 1}: ${emotionLabel(f.emotion).toLowerCase()} (${pct(f.confidence, 0)}).`).join(" ");
}

function placeFaceTags() {
  // Each face's tag goes where it covers no other face box and no other tag, and stays on the
  // photo: above or below its box, then beside it, then inside it; the chosen face's tag first.
  const layer = $("#face-layer");
  const fw = layer.clientWidth;
  const fh = layer.clientHeight;
  if (!fw || !fh) return;
  const boxes = [...layer.querySelectorAll(".face-box")];
  const rects = boxes.map((b) => ({ x: b.offsetLeft, y: b.offsetTop, w: b.offsetWidth, h: b.offsetHeight }));
  const area = (a, b, m = 0) => Math.max(0, Math.min(a.x + a.w, b.x + b.w + m) - Math.max(a.x, b.x - m))
    * Math.max(0, Math.min(a.y + a.h, b.y + b.h + m) - Math.max(a.y, b.y - m));
  const placed = [];
  const order = boxes.map((_, i) => i).sort((a, b) => (boxes[b].dataset.chosen === "true") - (boxes[a].dataset.chosen === "true"));
  for (const i of order) {
    const box = boxes[i];
    const tag = box.querySelector(".face-tag");
    const r = rects[i];
    const w = tag.offsetWidth;
    const h = tag.offsetHeight;
    const g = 3;
    const candidates = [
      ["above", r.x, r.y - h - g], ["above-end", r.x + r.w - w, r.y - h - g],
      ["below", r.x, r.y + r.h + g], ["below-end", r.x + r.w - w, r.y + r.h + g],
      ["right", r.x + r.w + g, r.y], ["left", r.x - w - g, r.y],
      ["inside", r.x + g + 1, r.y + g + 1], ["inside-bottom", r.x + g + 1, r.y + r.h - h - g - 1],
    ];
    let best = null;
    candidates.forEach(([name, x0, y0], rank) => {
      // Slide along the photo's edge rather than hang off it.
      const x = Math.max(0, Math.min(fw - w, x0));
      const t = { x, y: y0, w, h };
      const outside = w * h - area(t, { x: 0, y: 0, w: fw, h: fh });
      const onFaces = rects.reduce((sum, o, j) => sum + (j === i ? 0 : area(t, o, 2)), 0);
      const onTags = placed.reduce((sum, o) => sum + area(t, o, 1), 0);
      const cost = onFaces * 100 + outside * 10 + onTags * 10 + rank;
      if (!best || cost < best.cost) best = { cost, name, t };
    });
    tag.style.left = `${best.t.x - r.x - box.clientLeft}px`;
    tag.style.top = `${best.t.y - r.y - box.clientTop}px`;
    tag.dataset.place = best.name;
    placed.push(best.t);
  }
  layer.dataset.tagsPlaced = String(fw); // for tests: placed for this width
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
  $("#emotion-chart").replaceChildren(...emotionBars(probs, top));
  const m = job.model;
  $("#model-info").textContent = m ? `Model: ${m.name}${m.version ? ` v${m.version}` : ""}${m.head ? ` · ${m.head}` : ""}` : "";
}

function emotionBars(probs, top, { testid = "emotion-bar", idPrefix = "emo-label" } = {}) {
  // One bar per emotion, its probability as text and as an ARIA meter.
  return orderedEmotions(probs).map((e) => {
    const p = Math.max(0, Math.min(1, Number(probs[e]) || 0));
    const labelId = `${idPrefix}-${e}`;
    return el("li", { class: `bar-row emo-${e}${e === top ? " is-top" : ""}`, "data-testid": testid, "data-emotion": e, "data-value": p.toFixed(4) },
      el("span", { class: "bar-label", id: labelId, text: emotionLabel(e) }),
      el("span", { class: "bar-track", role: "meter", "aria-labelledby": labelId, "aria-valuemin": "0", "aria-valuemax": "100",
        "aria-valuenow": (p * 100).toFixed(1), "aria-valuetext": pct(p) },
        el("span", { class: "bar-fill", style: `width:${(p * 100).toFixed(2)}%` })),
      el("span", { class: "bar-value", "data-testid": "emotion-value", "aria-hidden": "true", text: pct(p) }));
  });
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

// A group job's account of the room: how many faces made the music and how much their moods agree.
function groupSummary(group) {
  const n = Number(group.faces);
  const spread = Number(group.spread);
  const agreement = spread < 0.2 ? "moods agree" : spread < 0.45 ? "moods differ a little" : "moods differ a lot";
  return `music for ${n} face${n === 1 ? "" : "s"}, ${agreement}`;
}

function renderPlaylist(job) {
  const rec = job.recommendation || {};
  const tracks = rec.tracks || [];
  const mode = rec.mode || job.mode;
  const summary = filtersSummary(state.request);
  const excluded = Number(rec.excluded_disliked) > 0 ? ` · ${FEEDBACK_COPY.excluded(Number(rec.excluded_disliked))}` : "";
  const group = rec.drive === "group" && rec.group ? ` · ${groupSummary(rec.group)}` : "";
  $("#playlist-sub").textContent = `${tracks.length} song${tracks.length === 1 ? "" : "s"} · ${modeTitle(mode)}${summary ? ` · ${summary}` : ""}${group}${excluded}`;
  const list = $("#playlist");
  if (!tracks.length) {
    list.replaceChildren(el("li", { class: "empty", text: "No songs matched. Widen the filters and try again." }));
    return;
  }
  list.replaceChildren(...tracks.map((t, i) => trackRow(t, i, { jobId: job.id, mode })));
}

function trackRow(t, i, { jobId = null, mode = null, feedback = true, testid = "track" } = {}) {
  // One playlist row. Without `feedback` (live playlists: no job to rate against) there are no
  // like/dislike buttons, only the Spotify link slot.
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
  // Fixed columns (link slot, then the vote buttons): the buttons line up in every row, with
  // or without a Spotify link; a song without one gets a quiet placeholder in the slot.
  const actions = el("div", { class: `track-actions${feedback ? "" : " no-vote"}` });
  if (t.spotify_url) {
    const a = el("a", { class: "spotify-link", href: t.spotify_url, target: "_blank", rel: "noopener noreferrer", "data-testid": "spotify-link" });
    a.innerHTML = `${ICON_OPEN}<span>Open in Spotify</span>`;
    a.append(el("span", { class: "visually-hidden", text: `: ${t.name} (opens in a new tab)` }));
    actions.append(a);
  } else {
    actions.append(el("span", { class: "spotify-none", "data-testid": "spotify-missing",
      title: "This song's catalogue entry has no Spotify id", text: "No Spotify link" }));
  }
  const item = el("li", { class: "track", "data-testid": testid, "data-track-id": t.track_id },
    el("span", { class: "track-num", "aria-hidden": "true", text: String(i + 1) }),
    el("div", { class: "track-main" }, title, meta, feats),
    actions);
  if (!feedback) return item;
  const like = el("button", { type: "button", class: "vote-btn like", "data-testid": "like-button", "aria-pressed": "false", "aria-label": `Like ${t.name}`, title: "Like" });
  like.innerHTML = ICON_UP;
  const dislike = el("button", { type: "button", class: "vote-btn dislike", "data-testid": "dislike-button", "aria-pressed": "false", "aria-label": `Dislike ${t.name}`, title: "Dislike" });
  dislike.innerHTML = ICON_DOWN;
  const status = el("p", { class: "feedback-status", "data-testid": "feedback-status", role: "status", "aria-live": "polite" });
  actions.append(el("div", { class: "vote", role: "group", "aria-label": `Feedback on ${t.name}` }, like, dislike));
  item.append(status);
  const ui = { like, dislike, status, item, mode };
  like.addEventListener("click", () => sendFeedback(jobId, t, true, ui));
  dislike.addEventListener("click", () => sendFeedback(jobId, t, false, ui));
  return item;
}

async function sendFeedback(jobId, track, liked, ui) {
  const pressed = liked ? ui.like : ui.dislike;
  const undo = pressed.getAttribute("aria-pressed") === "true"; // pressing it again takes it back
  ui.like.disabled = ui.dislike.disabled = true;
  ui.status.dataset.kind = "pending";
  ui.status.textContent = undo ? "Undoing…" : "Saving…";
  let res = null;
  let data = null;
  const url = `${API}jobs/${encodeURIComponent(jobId)}/feedback`;
  try {
    res = undo
      ? await fetch(`${url}/${encodeURIComponent(track.track_id)}`, { method: "DELETE", headers: { Accept: "application/json" } })
      : await fetch(url, {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ track_id: track.track_id, liked }),
      });
    data = res.status === 204 ? null : await res.json().catch(() => null);
  } catch { /* network */ }
  ui.like.disabled = ui.dislike.disabled = false;
  if (res && (res.ok || (undo && data?.error?.code === "feedback_not_found"))) {
    if (undo) {
      ui.like.setAttribute("aria-pressed", "false");
      ui.dislike.setAttribute("aria-pressed", "false");
      ui.item.classList.remove("is-disliked", "is-liked");
      ui.status.dataset.kind = "ok";
      ui.status.textContent = FEEDBACK_COPY.undone;
      return;
    }
    ui.like.setAttribute("aria-pressed", String(liked));
    ui.dislike.setAttribute("aria-pressed", String(!liked));
    ui.item.classList.toggle("is-disliked", !liked);
    ui.item.classList.toggle("is-liked", liked);
    ui.status.dataset.kind = "ok";
    ui.status.textContent = liked ? FEEDBACK_COPY.liked : FEEDBACK_COPY.disliked(ui.mode);
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
  const map = moodMap(rec, tracks, $("#mood-map"));
  const hidden = map.dataset.unlabelled ? map.dataset.unlabelled.split(",") : [];
  const numbers = (a) => (a.length > 1 ? `${a.slice(0, -1).join(", ")} and ${a.at(-1)}` : a[0]);
  $("#map-caption").textContent = (journey
    ? "Each dot is a song, numbered in playlist order, moving from your current mood toward the goal (the ring)."
    : "Each dot is a song, numbered in playlist order. The ring is the target sound for your mood.")
    + " The axes zoom in on where the songs are."
    + (hidden.length ? ` Song${hidden.length > 1 ? "s" : ""} ${numbers(hidden)} sit${hidden.length > 1 ? "" : "s"} on top of others: point at a dot to see its song.` : "");
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

const MAP_MIN_SPAN = 0.08; // the map never zooms in closer than this much of either axis

function axisRange(values) {
  // The data's extent plus a margin, at least MAP_MIN_SPAN wide, inside 0..1.
  const vals = values.map((v) => Math.max(0, Math.min(1, v)));
  if (!vals.length) return [0, 1];
  let lo = Math.min(...vals);
  let hi = Math.max(...vals);
  const pad = Math.max((hi - lo) * 0.1, 0.01);
  lo -= pad;
  hi += pad;
  if (hi - lo < MAP_MIN_SPAN) {
    const c = (lo + hi) / 2;
    lo = c - MAP_MIN_SPAN / 2;
    hi = c + MAP_MIN_SPAN / 2;
  }
  if (lo < 0) { hi -= lo; lo = 0; }
  if (hi > 1) { lo -= hi - 1; hi = 1; }
  return [Math.max(0, lo), Math.min(1, hi)];
}

function axisTicks([lo, hi]) {
  const step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5].find((st) => (hi - lo) / st <= 5) || 0.5;
  const ticks = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) ticks.push(Number(v.toFixed(4)));
  return { ticks, digits: step < 0.1 ? 2 : 1 };
}

function moodMap(rec, tracks, host) {
  // Positivity (valence) across, energy up. The axes zoom to where the points are (ticks say
  // where), and every label is placed where it covers no dot and no other label; a song whose
  // label finds no room keeps its dot, with its name on hover.
  const NS = "http://www.w3.org/2000/svg";
  const S = 300, L = 42, R = S - 8, T = 8, B = S - 40;
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
  const hasTarget = typeof target.valence === "number" && typeof target.energy === "number";
  const pts = tracks.filter((t) => typeof t.features?.valence === "number" && typeof t.features?.energy === "number");
  const path = pathPoints(rec);
  const journey = path.length > 1 && Math.hypot(path[0].valence - path.at(-1).valence, path[0].energy - path.at(-1).energy) > 0.02;
  const showStart = journey && hasTarget; // labels find their own room, however close the two are
  const all = [...pts.map((t) => t.features), ...(hasTarget ? [target] : []), ...(path.length > 1 ? path : [])];
  const [x0, x1] = axisRange(all.map((p) => p.valence));
  const [y0, y1] = axisRange(all.map((p) => p.energy));
  const X = (v) => L + ((Math.max(0, Math.min(1, v)) - x0) / (x1 - x0)) * (R - L);
  const Y = (e) => B - ((Math.max(0, Math.min(1, e)) - y0) / (y1 - y0)) * (B - T);
  Object.assign(svg.dataset, { xMin: x0.toFixed(3), xMax: x1.toFixed(3), yMin: y0.toFixed(3), yMax: y1.toFixed(3) });

  const vals = pts.map((t) => t.features.valence);
  const ens = pts.map((t) => t.features.energy);
  const range = (a) => (a.length ? `${Math.min(...a).toFixed(2)} to ${Math.max(...a).toFixed(2)}` : "n/a");
  const desc = `Mood map of positivity (left to right, ${x0.toFixed(2)} to ${x1.toFixed(2)}) and energy (bottom to top, ${y0.toFixed(2)} to ${y1.toFixed(2)}). Target: positivity ${featureValue("valence", target.valence)}, energy ${featureValue("energy", target.energy)}. Songs: positivity ${range(vals)}, energy ${range(ens)}.`;
  svg.setAttribute("aria-label", desc);
  svg.append(node("title", {}, desc));
  svg.append(node("rect", { x: L, y: T, width: R - L, height: B - T, class: "map-bg", "data-testid": "map-plot", rx: 6 }));

  // ticks and faint grid, then the 0.5 lines that split the four moods, where they are in view
  const xt = axisTicks([x0, x1]);
  const yt = axisTicks([y0, y1]);
  for (const v of xt.ticks) {
    svg.append(node("line", { x1: X(v), y1: T, x2: X(v), y2: B, class: "map-tick-line" }));
    svg.append(node("text", { x: X(v), y: B + 13, "text-anchor": "middle", class: "map-tick" }, v.toFixed(xt.digits)));
  }
  for (const v of yt.ticks) {
    svg.append(node("line", { x1: L, y1: Y(v), x2: R, y2: Y(v), class: "map-tick-line" }));
    svg.append(node("text", { x: L - 5, y: Y(v) + 3.5, "text-anchor": "end", class: "map-tick" }, v.toFixed(yt.digits)));
  }
  if (x0 < 0.5 && x1 > 0.5) svg.append(node("line", { x1: X(0.5), y1: T, x2: X(0.5), y2: B, class: "map-grid" }));
  if (y0 < 0.5 && y1 > 0.5) svg.append(node("line", { x1: L, y1: Y(0.5), x2: R, y2: Y(0.5), class: "map-grid" }));
  svg.append(node("text", { x: (L + R) / 2, y: S - 8, "text-anchor": "middle", class: "map-axis" }, "positivity →"));
  svg.append(node("text", { x: 10, y: (T + B) / 2, "text-anchor": "middle", class: "map-axis", transform: `rotate(-90 10 ${(T + B) / 2})` }, "energy →"));

  if (path.length > 1) {
    svg.append(node("polyline", { points: path.map((p) => `${X(p.valence)},${Y(p.energy)}`).join(" "), class: "map-target-path" }));
  }
  if (pts.length > 1) {
    svg.append(node("polyline", { points: pts.map((t) => `${X(t.features.valence)},${Y(t.features.energy)}`).join(" "), class: "map-path" }));
  }

  // Everything drawn so far that a label must not cover, in viewBox units.
  const taken = [];
  const occupy = (cx, cy, r) => taken.push({ x: cx - r, y: cy - r, w: 2 * r, h: 2 * r });
  const free = (b) => b.x >= L + 2 && b.y >= T + 2 && b.x + b.w <= R - 2 && b.y + b.h <= B - 2
    && !taken.some((o) => b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h);
  const DOT_R = 4.5;
  const dots = pts.map((t) => ({ t, n: tracks.indexOf(t) + 1, cx: X(t.features.valence), cy: Y(t.features.energy) }));
  for (const d of dots) occupy(d.cx, d.cy, DOT_R + 1);
  const tx = hasTarget ? X(target.valence) : 0;
  const ty = hasTarget ? Y(target.energy) : 0;
  if (hasTarget) occupy(tx, ty, 12);
  const sx = showStart ? X(path[0].valence) : 0;
  const sy = showStart ? Y(path[0].energy) : 0;
  if (showStart) occupy(sx, sy, 8);

  const labels = node("g", { class: "map-labels" });
  const measure = (text, cls, size) => {
    // The label's real box (the browser's, as drawn), or an estimate when the map is not on screen.
    const label = node("text", { x: 0, y: 0, class: cls }, text);
    labels.append(label);
    const bb = label.getBBox();
    if (bb.width > 0) return { label, bx: bb.x, by: bb.y, w: bb.width, h: bb.height };
    return { label, bx: 0, by: -size * 1.3, w: text.length * size * 0.62 + 2, h: size * 1.7 };
  };
  const put = (m, x, y) => {
    m.label.setAttribute("x", (x - m.bx).toFixed(2));
    m.label.setAttribute("y", (y - m.by).toFixed(2));
    taken.push({ x, y, w: m.w, h: m.h });
  };
  const place = (text, cx, cy, r, attrs) => {
    // Around the point: right, left, above, below, the diagonals; close first, then a step out
    // (with a thin leader line). Returns the text node, or null where nothing is free.
    const m = measure(text, attrs.class, attrs.size);
    const { w, h } = m;
    if (attrs.testid) m.label.dataset.testid = attrs.testid;
    if (attrs.song) m.label.dataset.song = attrs.song;
    for (const [gap, lead] of [[2, false], [9, true]]) {
      const d = r + gap;
      const q = d * 0.72;
      const spots = [
        [cx + d, cy - h / 2], [cx - d - w, cy - h / 2], [cx - w / 2, cy - d - h], [cx - w / 2, cy + d],
        [cx + q, cy - q - h], [cx - q - w, cy - q - h], [cx + q, cy + q], [cx - q - w, cy + q],
      ];
      for (const [x, y] of spots) {
        if (!free({ x, y, w, h })) continue;
        put(m, x, y);
        if (lead) {
          const mx = x + w / 2, my = y + h / 2, len = Math.hypot(mx - cx, my - cy);
          const at = (f) => [cx + ((mx - cx) / len) * f, cy + ((my - cy) / len) * f];
          const [x1, y1] = at(r + 1);
          const [x2, y2] = at(len - Math.min(w, h) / 2);
          labels.prepend(node("line", { x1, y1, x2, y2, class: "map-leader" }));
        }
        return m.label;
      }
    }
    m.label.remove();
    return null;
  };

  if (showStart) {
    const g = node("g", { class: "map-start-mark" });
    g.append(node("title", {}, `Your current mood: positivity ${path[0].valence.toFixed(2)}, energy ${path[0].energy.toFixed(2)}`));
    g.append(node("rect", { x: sx - 6, y: sy - 6, width: 12, height: 12, rx: 2, class: "map-start", transform: `rotate(45 ${sx} ${sy})` }));
    svg.append(g);
  }
  if (hasTarget) {
    const g = node("g", { class: "map-target-mark" });
    g.append(node("title", {}, `${journey ? "Goal" : "Target"}: positivity ${target.valence.toFixed(2)}, energy ${target.energy.toFixed(2)}`));
    g.append(node("circle", { cx: tx, cy: ty, r: 11, class: "map-target" }));
    g.append(node("circle", { cx: tx, cy: ty, r: 2.5, class: "map-target-dot" }));
    svg.append(g);
  }
  // Later songs first, so song 1 is drawn on top when dots overlap.
  for (const d of [...dots].reverse()) {
    const g = node("g", { class: "map-dot", "data-song": d.n });
    g.append(node("title", {}, `${d.n}. ${d.t.name || d.t.track_id}: positivity ${d.t.features.valence.toFixed(2)}, energy ${d.t.features.energy.toFixed(2)}`));
    g.append(node("circle", { cx: d.cx, cy: d.cy, r: DOT_R }));
    svg.append(g);
  }
  svg.append(labels);
  host.replaceChildren(svg); // on the page from here: labels are measured as the browser draws them
  if (hasTarget) place(journey ? "goal" : "target", tx, ty, 11, { size: 10.5, class: "map-label", testid: "map-label" });
  if (showStart) place("your mood", sx, sy, 8, { size: 10.5, class: "map-label", testid: "map-label" });
  const unlabelled = [];
  for (const d of dots) {
    if (!place(String(d.n), d.cx, d.cy, DOT_R, { size: 10, class: "map-num", testid: "map-num", song: d.n })) {
      unlabelled.push(d.n);
      svg.querySelector(`.map-dot[data-song="${d.n}"]`).classList.add("is-unlabelled");
    }
  }
  // The four moods, named in the corners of the view that show them, where there is room.
  const quads = [
    ["Tense", 0.25, 0.75, "start", "top"], ["Joyful", 0.75, 0.75, "end", "top"],
    ["Sad", 0.25, 0.25, "start", "bottom"], ["Calm", 0.75, 0.25, "end", "bottom"],
  ];
  for (const [name, qv, qe, anchor, edge] of quads) {
    const [vx0, vx1] = qv < 0.5 ? [x0, Math.min(x1, 0.5)] : [Math.max(x0, 0.5), x1];
    const [ve0, ve1] = qe < 0.5 ? [y0, Math.min(y1, 0.5)] : [Math.max(y0, 0.5), y1];
    if (vx1 - vx0 < (x1 - x0) * 0.25 || ve1 - ve0 < (y1 - y0) * 0.2) continue;
    const m = measure(name, "map-quad", 10);
    const x = anchor === "start" ? X(vx0) + 4 : X(vx1) - 4 - m.w;
    const y = edge === "top" ? Y(ve1) + 3 : Y(ve0) - 3 - m.h;
    if (free({ x, y, w: m.w, h: m.h })) put(m, x, y);
    else m.label.remove();
  }
  svg.dataset.unlabelled = unlabelled.join(",");
  return svg;
}

// ───────────────────────── live mood ─────────────────────────
// Camera -> a JPEG frame about every 2 s -> POST /v1/sessions/{id}/frames; GET /v1/sessions/{id}
// about every second -> the smoothed mood, its trend and the session's playlist, updated in place.
// Every timer goes through liveLater and every request carries live.ctrl's signal, so stopLive
// leaves nothing running. The server drops a waiting frame when a newer one arrives; the page
// sends one frame at a time.

const LIVE = {
  frameMs: 2000, // one frame about every 2 s
  pollMs: 1000,
  maxSide: 640, // frames are scaled down to at most this many pixels on the longer side
  quality: 0.8,
  windowS: 60,
  maxNetFailures: 5, // consecutive network failures before live mode gives up
  minChartSpanS: 30, // the chart's time axis is never shorter than this
};
const LIVE_HINTS = {
  no_face: "No face in view: look at the camera, in good light.",
};
const TRANSIENT = new Set([429, 502, 503, 504]);

const live = {
  gen: 0, // bumps on each start and stop: an older callback sees it changed and does nothing
  on: false,
  id: null,
  stream: null,
  timers: new Set(),
  ctrl: null, // AbortController of this run's requests
  canvas: null,
  request: null, // the form as it was at start
  changes: null, // playlist_changes of the playlist on screen
  trendKey: "",
  emotion: null,
  netFailures: 0,
  framesSent: 0,
};

function liveLater(fn, ms, gen) {
  // setTimeout that stopLive clears, and that never runs for an older run.
  const t = setTimeout(() => {
    live.timers.delete(t);
    if (gen === live.gen && live.on) fn(gen);
  }, Math.max(0, ms));
  live.timers.add(t);
}

const liveWait = (ms, gen) => new Promise((resolve) => liveLater(resolve, ms, gen)); // never resolves once stopped

function retryAfterMs(res) {
  const h = res.headers.get("Retry-After");
  let s = Number(h);
  if (h && Number.isNaN(s)) s = (Date.parse(h) - Date.now()) / 1000; // an HTTP date
  if (!Number.isFinite(s) || s <= 0) s = 2;
  return Math.min(60, Math.max(1, s)) * 1000;
}

function liveSessionUrl(id, rest = "") {
  return `${API}sessions/${encodeURIComponent(id)}${rest}`;
}

function lowerFirst(t) {
  return t ? t[0].toLowerCase() + t.slice(1) : t;
}

function liveApiReason(res, data, { creating = false } = {}) {
  // Why live mode stops, after "Live mode stopped: ".
  const info = apiError(res, data);
  const code = info.code;
  if (creating && (res.status === 404 || res.status === 405) && !["session_not_found"].includes(code)) {
    return "this server doesn't offer live mode yet";
  }
  if (code === "session_not_found") return "the live session is gone from the server (it may have expired)";
  if (code === "session_closed") return "the server closed the live session (stopped elsewhere, or idle too long)";
  const copy = ERRORS[code];
  const what = copy ? lowerFirst(copy.title) : info.message ? lowerFirst(info.message.replace(/\.$/, "")) : "something went wrong";
  return `${what} (${code})`;
}

function liveCameraProblem(err) {
  return {
    NotAllowedError: "camera access was blocked. Allow the camera for this site (the camera icon in the address bar or the browser's site settings), then restart live mode",
    SecurityError: "camera access was blocked by the browser's security settings",
    NotFoundError: "no camera was found. Connect a camera and restart live mode",
    OverconstrainedError: "no suitable camera was found",
    NotReadableError: "the camera is in use by another app or can't be started. Close other apps using it, then restart live mode",
    AbortError: "the camera couldn't be started",
  }[err?.name] || "the camera couldn't be started";
}

function liveBody(form) {
  // The page's settings as POST /v1/sessions wants them (JSON: numbers, a list of genres).
  const f = form.filters;
  const body = { mode: form.mode, limit: form.limit, window_s: LIVE.windowS };
  if (f.year_min) body.year_min = Number(f.year_min);
  if (f.year_max) body.year_max = Number(f.year_max);
  if (f.genres) body.genres = f.genres.split(",").map((g) => g.trim()).filter(Boolean);
  if (f.min_popularity) body.min_popularity = Number(f.min_popularity);
  if (f.exclude_explicit) body.exclude_explicit = true;
  if (f.diversity !== undefined) body.diversity = Number(f.diversity);
  return body;
}

function liveStatus(state_, text, { error = false } = {}) {
  // state_: "starting" | "running" | "stopped"
  const status = $("#live-status");
  if (status.textContent !== text) status.textContent = text;
  status.dataset.kind = error ? "error" : state_;
  const badge = $("#live-badge");
  badge.dataset.state = state_;
  $("#live-badge-text").textContent = { starting: "Starting", running: "Live", stopped: "Stopped" }[state_] || "Off";
  $("#live").dataset.state = state_;
  $("#live-restart").hidden = state_ !== "stopped";
}

function setLiveButtons(running) {
  const start = $("#live-start");
  const stop = $("#live-stop");
  const hadFocus = document.activeElement === start || document.activeElement === stop
    || document.activeElement === $("#live-restart") || document.activeElement === document.body;
  start.hidden = running;
  stop.hidden = !running;
  if (hadFocus && !$("#pane-live").hidden) (running ? stop : start).focus({ preventScroll: true });
}

function resetLiveView() {
  live.changes = null;
  live.trendKey = "";
  live.emotion = null;
  live.framesSent = 0;
  delete $("#live").dataset.sessionId;
  $("#live-mood").replaceChildren(el("span", { class: "live-mood-wait", text: "Waiting for the first reading…" }));
  delete $("#live-mood").dataset.emotion;
  $("#live-conf").textContent = "";
  $("#live-hint").textContent = "";
  $("#live-hint").dataset.code = "";
  $("#live-bars").replaceChildren();
  $("#live-stats").textContent = "";
  $("#live-chart").replaceChildren();
  $("#live-chart").dataset.points = "0";
  $("#live-playlist").replaceChildren();
  delete $("#live-playlist").dataset.changes;
  $("#live-playlist-sub").textContent = "It appears after the first readings and changes when your mood does.";
  $("#live-announce").textContent = "";
}

async function startLive() {
  if (live.on) return;
  const gen = ++live.gen;
  live.on = true;
  live.ctrl = new AbortController();
  live.netFailures = 0;
  stopCamera();
  resetLiveView();
  show("live");
  setLiveButtons(true);
  liveStatus("starting", "Asking for permission to use the camera…");
  if (window.matchMedia("(max-width: 899px)").matches) {
    $("#live").scrollIntoView({ behavior: prefersReducedMotion() ? "auto" : "smooth", block: "start" });
  }
  if (!window.isSecureContext) {
    stopLive("the camera only works on a secure page (https:// or localhost)", { error: true });
    return;
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    stopLive("this browser can't use a camera here", { error: true });
    return;
  }
  const form = collectForm();
  if (!Number.isInteger(form.limit) || form.limit < 1 || form.limit > 50) {
    stopLive("the number of songs must be between 1 and 50 (under “Filters and playlist length”)", { error: true });
    return;
  }
  if (form.filters.year_min && form.filters.year_max && Number(form.filters.year_min) > Number(form.filters.year_max)) {
    stopLive("the “from” year is after the “up to” year (under “Filters and playlist length”)", { error: true });
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (err) {
    if (gen === live.gen) stopLive(liveCameraProblem(err), { error: true });
    return;
  }
  if (gen !== live.gen) { for (const t of stream.getTracks()) t.stop(); return; }
  live.stream = stream;
  for (const track of stream.getVideoTracks()) {
    track.addEventListener("ended", () => {
      if (gen === live.gen) stopLive("the camera was turned off or disconnected", { error: true });
    });
  }
  const video = $("#live-video");
  video.srcObject = stream;
  video.hidden = false;
  try { await video.play(); } catch { /* muted video may autoplay; frames wait for videoWidth */ }
  if (gen !== live.gen) return;

  liveStatus("starting", "Opening a live session…");
  live.request = form;
  let res = null;
  let data = null;
  for (let attempt = 1; ; attempt++) {
    try {
      res = await fetch(`${API}sessions`, {
        method: "POST", signal: live.ctrl.signal,
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(liveBody(form)),
      });
      data = await res.json().catch(() => null);
    } catch {
      res = null;
    }
    if (gen !== live.gen) {
      if (res?.ok && data?.id) closeLiveSession(data.id); // stopped while it was being opened
      return;
    }
    if (!res || !TRANSIENT.has(res.status) || attempt >= 3) break;
    liveStatus("starting", "The service is busy; trying again in a moment…");
    await liveWait(retryAfterMs(res), gen);
  }
  if (!res) { stopLive("can't reach the moodtunes server", { error: true }); return; }
  if (!res.ok || !data?.id) { stopLive(liveApiReason(res, data, { creating: true }), { error: true }); return; }
  live.id = data.id;
  $("#live").dataset.sessionId = data.id;
  liveStatus("running", `Live (${modeTitle(form.mode)}): reading your mood about every ${LIVE.frameMs / 1000} seconds.`);
  sendFrame(gen);
  liveLater(pollLive, LIVE.pollMs, gen);
}

function stopLive(why, { error = false } = {}) {
  if (!live.on) return;
  live.gen++;
  live.on = false;
  for (const t of live.timers) clearTimeout(t);
  live.timers.clear();
  live.ctrl?.abort();
  live.ctrl = null;
  if (live.stream) for (const t of live.stream.getTracks()) t.stop();
  live.stream = null;
  const video = $("#live-video");
  video.pause();
  video.srcObject = null;
  video.hidden = true;
  if (live.id) closeLiveSession(live.id);
  live.id = null;
  setLiveButtons(false);
  liveStatus("stopped", `Live mode stopped: ${why}.`, { error });
}

function closeLiveSession(id) {
  // keepalive: the DELETE still goes out when the page is being hidden or closed.
  fetch(liveSessionUrl(id), { method: "DELETE", keepalive: true, headers: { Accept: "application/json" } })
    .catch(() => { /* the server closes idle sessions itself */ });
}

function liveNetworkFailure() {
  if (++live.netFailures > LIVE.maxNetFailures) { stopLive("can't reach the moodtunes server", { error: true }); return true; }
  return false;
}

async function sendFrame(gen) {
  if (document.hidden) { stopLive("you left the tab (live mode runs only while the page is in view)"); return; }
  const started = performance.now();
  const video = $("#live-video");
  if (!video.videoWidth || video.readyState < 2) { liveLater(sendFrame, 250, gen); return; } // camera warming up
  const scale = Math.min(1, LIVE.maxSide / Math.max(video.videoWidth, video.videoHeight));
  const w = Math.round(video.videoWidth * scale);
  const h = Math.round(video.videoHeight * scale);
  const canvas = (live.canvas ||= document.createElement("canvas"));
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").drawImage(video, 0, 0, w, h);
  const blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", LIVE.quality));
  if (gen !== live.gen) return;
  if (!blob) { liveLater(sendFrame, LIVE.frameMs, gen); return; }
  const body = new FormData();
  body.append("image", blob, "frame.jpg");
  let res = null;
  let data = null;
  try {
    res = await fetch(liveSessionUrl(live.id, "/frames"), { method: "POST", body, signal: live.ctrl.signal, headers: { Accept: "application/json" } });
    data = await res.json().catch(() => null);
  } catch {
    res = null;
  }
  if (gen !== live.gen) return;
  if (!res) {
    if (!liveNetworkFailure()) liveLater(sendFrame, LIVE.frameMs, gen);
    return;
  }
  live.netFailures = 0;
  if (TRANSIENT.has(res.status)) {
    // Busy or rate-limited: wait as long as the server asks, then carry on.
    const ms = retryAfterMs(res);
    $("#live-hint").dataset.code = "busy";
    $("#live-hint").textContent = `The service is busy; sending the next frame in ${Math.round(ms / 1000)} s.`;
    liveLater(sendFrame, ms, gen);
    return;
  }
  if (!res.ok) { stopLive(liveApiReason(res, data), { error: true }); return; }
  live.framesSent++;
  $("#live").dataset.framesSent = String(live.framesSent);
  if ($("#live-hint").dataset.code === "busy") { $("#live-hint").textContent = ""; $("#live-hint").dataset.code = ""; }
  liveLater(sendFrame, LIVE.frameMs - (performance.now() - started), gen);
}

async function pollLive(gen) {
  let res = null;
  let data = null;
  try {
    res = await fetch(liveSessionUrl(live.id), { cache: "no-store", signal: live.ctrl.signal, headers: { Accept: "application/json" } });
    data = await res.json().catch(() => null);
  } catch {
    res = null;
  }
  if (gen !== live.gen) return;
  if (!res) {
    if (!liveNetworkFailure()) liveLater(pollLive, LIVE.pollMs * 2, gen);
    return;
  }
  live.netFailures = 0;
  if (TRANSIENT.has(res.status)) { liveLater(pollLive, retryAfterMs(res), gen); return; }
  if (!res.ok || !data) { stopLive(liveApiReason(res, data), { error: true }); return; }
  renderLive(data);
  if (data.closed_at) { stopLive("the server closed the live session (stopped elsewhere, or idle too long)", { error: true }); return; }
  liveLater(pollLive, LIVE.pollMs, gen);
}

function renderLive(s) {
  const n = (v) => Number(v) || 0;
  $("#live-stats").textContent = `${n(s.frames_received)} frame${n(s.frames_received) === 1 ? "" : "s"} sent · ${n(s.frames_processed)} read`
    + (n(s.frames_dropped) ? ` · ${n(s.frames_dropped)} skipped (a newer frame replaced them)` : "");

  // a gentle hint about the latest frame (no face in view), unless the service is busy
  const hint = $("#live-hint");
  if (hint.dataset.code !== "busy") {
    const code = s.latest_frame?.error_code || "";
    const text = code ? LIVE_HINTS[code] || `The last frame couldn't be read (${code}); still trying.`
      : s.smoothed ? "" : "Reading your first frames…";
    hint.dataset.code = code;
    if (hint.textContent !== text) hint.textContent = text;
  }

  const sm = s.smoothed;
  if (sm?.emotion) {
    const probs = sm.probabilities || {};
    const conf = Number(probs[sm.emotion]);
    if (sm.emotion !== live.emotion) {
      // Only a change of mood is announced (aria-live), not every new number.
      live.emotion = sm.emotion;
      const mood = $("#live-mood");
      mood.dataset.emotion = sm.emotion;
      mood.replaceChildren(el("span", { class: `headline-emotion emo-${sm.emotion}`, "data-testid": "live-emotion", text: emotionLabel(sm.emotion) }));
    }
    $("#live-conf").textContent = Number.isFinite(conf) ? `${pct(conf, 0)} sure, smoothed` : "";
    $("#live-bars").replaceChildren(...emotionBars(probs, sm.emotion, { testid: "live-emotion-bar", idPrefix: "live-emo-label" }));
  }

  renderLiveChart(Array.isArray(s.trend) ? s.trend : []);

  if (s.playlist && s.playlist_changes !== live.changes) {
    const first = live.changes === null;
    live.changes = s.playlist_changes;
    renderLivePlaylist(s, first);
  }
}

function renderLivePlaylist(s, first) {
  const rec = s.playlist || {};
  const tracks = rec.tracks || [];
  const emotion = s.playlist_emotion || s.smoothed?.emotion;
  const summary = filtersSummary(live.request);
  const forMood = emotion ? ` · for a ${emotionLabel(emotion).toLowerCase()} mood` : "";
  $("#live-playlist-sub").textContent = `${tracks.length} song${tracks.length === 1 ? "" : "s"} · ${modeTitle(rec.mode || s.mode)}${forMood}${summary ? ` · ${summary}` : ""}`;
  const list = $("#live-playlist");
  const [x, y] = [window.scrollX, window.scrollY]; // the reader's place stays where it was
  list.replaceChildren(...(tracks.length
    ? tracks.map((t, i) => trackRow(t, i, { feedback: false, testid: "live-track" }))
    : [el("li", { class: "empty", text: "No songs matched. Widen the filters and restart live mode." })]));
  list.dataset.changes = String(s.playlist_changes ?? 0);
  if (window.scrollX !== x || window.scrollY !== y) window.scrollTo({ left: x, top: y, behavior: "instant" });
  $("#live-announce").textContent = first ? "Your live playlist is ready."
    : `Playlist updated${emotion ? ` for a ${emotionLabel(emotion).toLowerCase()} mood` : ""}.`;
}

function renderLiveChart(trend) {
  // Positivity (valence) and energy (arousal) of the smoothed mood over the session, 0..1 up,
  // time across (seconds since the first reading); a strip underneath colours each reading's mood.
  const pts = trend.map((p, i) => ({ t: Date.parse(p.at), v: Number(p.valence), a: Number(p.arousal), e: p.emotion, i }))
    .filter((p) => Number.isFinite(p.v) && Number.isFinite(p.a));
  if (pts.some((p) => Number.isNaN(p.t))) pts.forEach((p) => { p.t = p.i * LIVE.frameMs; }); // no usable times
  const host = $("#live-chart");
  // Drawn at its displayed width (text stays readable on a phone); a redraw only when it changed.
  const W = Math.round(Math.min(720, Math.max(300, host.clientWidth || 560)));
  const key = `${W}:${pts.length}:${pts.at(-1)?.t}:${pts.at(-1)?.v}:${pts.at(-1)?.a}`;
  if (key === live.trendKey) return;
  live.trendKey = key;
  host.dataset.points = String(pts.length);
  const NS = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const H = 200, L = 36, R = W - 10, T = 8, B = H - 46, STRIP = B + 24;
  const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-testid": "live-chart-svg" });
  if (!pts.length) {
    svg.setAttribute("aria-label", "Mood over time: no readings yet.");
    svg.append(node("rect", { x: L, y: T, width: R - L, height: B - T, rx: 6, class: "map-bg" }));
    svg.append(node("text", { x: (L + R) / 2, y: (T + B) / 2, "text-anchor": "middle", class: "map-axis" }, "No readings yet"));
    host.replaceChildren(svg);
    return;
  }
  const t0 = pts[0].t;
  const span = Math.max(LIVE.minChartSpanS * 1000, pts.at(-1).t - t0);
  const X = (t) => L + ((t - t0) / span) * (R - L);
  const Y = (v) => B - Math.max(0, Math.min(1, v)) * (B - T);
  const clock = (ms) => { const s = Math.round(ms / 1000); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; };
  const last = pts.at(-1);
  const desc = `Mood over the last ${clock(last.t - t0)} (${pts.length} reading${pts.length === 1 ? "" : "s"}): `
    + `positivity now ${last.v.toFixed(2)}, energy now ${last.a.toFixed(2)}, ${emotionLabel(last.e).toLowerCase()}.`;
  svg.setAttribute("aria-label", desc);
  svg.append(node("title", {}, desc));
  svg.append(node("rect", { x: L, y: T, width: R - L, height: B - T, rx: 6, class: "map-bg" }));
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(node("line", { x1: L, y1: Y(v), x2: R, y2: Y(v), class: v === 0.5 ? "map-grid" : "map-tick-line" }));
    if (v % 0.5 === 0) svg.append(node("text", { x: L - 6, y: Y(v) + 3.5, "text-anchor": "end", class: "map-tick" }, v.toFixed(1)));
  }
  const step = [5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800].find((st) => span / 1000 / st <= Math.min(6, (R - L) / 45)) || 3600;
  for (let s = 0; s * 1000 <= span + 1; s += step) {
    const x = X(t0 + s * 1000);
    svg.append(node("line", { x1: x, y1: B, x2: x, y2: B + 4, class: "map-tick-line" }));
    const anchor = x > R - 14 ? "end" : "middle"; // the last label stays inside the chart
    svg.append(node("text", { x: anchor === "end" ? R : x, y: B + 15, "text-anchor": anchor, class: "map-tick" }, clock(s * 1000)));
  }
  // the mood strip: one band per reading, until the next
  const strip = node("g", { class: "live-strip", "aria-hidden": "true" });
  pts.forEach((p, i) => {
    const x1 = X(p.t);
    const x2 = i + 1 < pts.length ? X(pts[i + 1].t) : Math.max(x1 + 3, Math.min(R, x1 + 6));
    const band = node("rect", { x: x1, y: STRIP, width: Math.max(1, x2 - x1), height: 8, class: `live-band emo-${p.e}` });
    band.append(node("title", {}, `${clock(p.t - t0)} ${emotionLabel(p.e)}`));
    strip.append(band);
  });
  svg.append(strip);
  for (const [cls, k, name] of [["live-valence", "v", "Positivity"], ["live-arousal", "a", "Energy"]]) {
    const line = node("polyline", { points: pts.map((p) => `${X(p.t).toFixed(1)},${Y(p[k]).toFixed(1)}`).join(" "), class: `live-line ${cls}`, "data-testid": `${cls}-line` });
    svg.append(line);
    const dot = node("circle", { cx: X(last.t), cy: Y(last[k]), r: 4, class: `live-dot ${cls}` });
    dot.append(node("title", {}, `${name} now: ${last[k].toFixed(2)}`));
    svg.append(dot);
  }
  host.replaceChildren(svg);
}

function setupLive() {
  $("#live-start").addEventListener("click", startLive);
  $("#live-restart").addEventListener("click", () => {
    // Restart from the live tab, so the Stop button is at hand.
    const tab = $("#tab-live");
    if (tab.getAttribute("aria-selected") !== "true" || $(".tabs").hidden) {
      setFile(null);
      tab.click();
    }
    startLive();
  });
  $("#live-stop").addEventListener("click", () => stopLive("you pressed Stop"));
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) stopLive("you left the tab (live mode runs only while the page is in view)");
  });
  window.addEventListener("pagehide", () => stopLive("you left the page"));
}

// ───────────────────────── start ─────────────────────────

function setupForm() {
  $("#job-form").addEventListener("submit", (e) => {
    e.preventDefault();
    // Enter in a field while on the live tab (no photo): that tab's action, not a photo upload.
    if ($("#tab-live").getAttribute("aria-selected") === "true" && !state.file) { if (!live.on) startLive(); return; }
    submit();
  });
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

$("#feedback-note").textContent = FEEDBACK_COPY.note;
setupTabs();
setupUpload();
setupCamera();
setupForm();
setupLive();
loadModes();
