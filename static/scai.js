// SCAI demo page: upload a photo, follow its session through the API, show the result.
// Progress comes from the server: each request waits until the session's state changes.
"use strict";

const api = {
  models: "api/v1/models",
  submit: (kind, params) => `api/v1/${kind}?${new URLSearchParams(params)}`,
};
const base = new URL(document.querySelector(".brand").getAttribute("href"), location.href);
const $ = (id) => document.getElementById(id);
const panel = $("panel"), form = $("form"), modelSelect = $("model"), fileInput = $("photo");
const drop = $("drop"), preview = $("preview"), submit = $("submit");
const statusLine = $("status"), errorBox = $("error"), result = $("result");
const STATE_WORDS = { initialization: "Queued, waiting for a worker…", processing: "Processing…" };

// Where the server sets API keys, uploads and the model list need one: asked for once, kept in
// this browser's storage, sent as a header.
const API_KEY_HEADER = "X-API-Key";
const API_KEY_STORAGE = "scai-api-key";
const keyForm = $("key-form"), keyInput = $("api-key");

function apiHeaders() {
  const key = localStorage.getItem(API_KEY_STORAGE);
  return key ? { [API_KEY_HEADER]: key } : {};
}

function askForKey(message) {
  keyForm.hidden = false;
  keyInput.focus();
  showError(message);
}

let kind = "classify";
let models = {};
let chosen = null; // the File to upload

function url(path) {
  return new URL(path, base).toString();
}

// A session's key travels in a header, never in a URL (access logs, history).
const KEY_HEADER = "X-Session-Key";

function keyless(link) {
  const target = new URL(url(link));
  target.searchParams.delete("key");
  return target;
}

async function fetchWithKey(link, key) {
  return fetch(link, { headers: { [KEY_HEADER]: key } });
}

function setStatus(text, done = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("done", done);
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function fillModels() {
  modelSelect.replaceChildren();
  for (const name of models[kind] || []) {
    const option = new Option(name, name, name === "default", name === "default");
    modelSelect.add(option);
  }
  if (!modelSelect.options.length) {
    modelSelect.add(new Option("no model configured", ""));
  }
  submit.disabled = !chosen || !modelSelect.value;
}

function selectTab(button) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab === button;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
  }
  kind = button.dataset.kind;
  panel.setAttribute("aria-labelledby", button.id);
  panel.classList.toggle("detect", kind === "detect");
  result.replaceChildren();
  showError("");
  setStatus("");
  fillModels();
}

function choose(file) {
  if (!file) return;
  chosen = file;
  showError("");
  result.replaceChildren();
  setStatus(`${file.name || "pasted image"} (${Math.max(1, Math.round(file.size / 1024))} KB) ready`);
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  submit.disabled = !modelSelect.value;
}

// Upload with XMLHttpRequest: fetch() reports no upload progress.
function upload(file) {
  return new Promise((resolve, reject) => {
    const params = { model: modelSelect.value, wait: 0 };
    if (kind === "detect") params.min_score = $("min-score").value;
    const request = new XMLHttpRequest();
    request.open("POST", url(api.submit(kind, params)));
    for (const [name, value] of Object.entries(apiHeaders())) request.setRequestHeader(name, value);
    request.responseType = "json";
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) setStatus(`Uploading… ${Math.round((100 * event.loaded) / event.total)}%`);
    };
    request.onload = () => resolve({ status: request.status, body: request.response });
    request.onerror = () => reject(new Error("The server could not be reached."));
    const data = new FormData();
    data.append("photo", file, file.name || "pasted.png");
    request.send(data);
  });
}

async function follow(body) {
  // Each request returns as soon as the state changes (or after 30 s), so no timer paces this.
  let state = body;
  while (state.state === "initialization" || state.state === "processing") {
    setStatus(STATE_WORDS[state.state]);
    const next = keyless(state.links.self);
    next.searchParams.set("wait", "30");
    next.searchParams.set("changed_from", state.state);
    const response = await fetchWithKey(next, body.sesskey);
    const fresh = await response.json();
    if (!response.ok && response.status !== 422) throw new Error(fresh.message || "The server answered an error.");
    state = fresh; // its links now include the annotated image, once there is one
  }
  state.sesskey = body.sesskey;
  return state;
}

function percent(score) {
  return `${(score * 100).toFixed(1)}%`;
}

function showClassification(state) {
  const list = document.createElement("ul");
  list.className = "bars";
  list.setAttribute("aria-label", "Top labels");
  for (const p of state.predictions) {
    const item = document.createElement("li");
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: p.label });
    const track = Object.assign(document.createElement("span"), { className: "track" });
    const fill = Object.assign(document.createElement("span"), { className: "fill" });
    fill.style.width = percent(p.score);
    track.append(fill);
    const pct = Object.assign(document.createElement("span"), { className: "pct", textContent: percent(p.score) });
    item.append(name, track, pct);
    list.append(item);
  }
  if (!state.predictions.length) list.append(Object.assign(document.createElement("li"), { textContent: "No label." }));
  result.replaceChildren(list);
}

async function showDetection(state) {
  const figure = document.createElement("div");
  figure.className = "figure";
  const image = new Image();
  image.alt = `Photo with ${state.detections.length} detected objects outlined`;
  image.id = "annotated";
  const annotated = await fetchWithKey(keyless(state.links.output), state.sesskey);
  if (!annotated.ok) throw new Error("The annotated image could not be loaded.");
  image.src = URL.createObjectURL(await annotated.blob());
  figure.append(image);
  const table = document.createElement("table");
  table.innerHTML = "<caption class='visually-hidden'>Detections</caption>" +
    "<thead><tr><th scope='col'>Label</th><th scope='col'>Score</th><th scope='col'>Box (x, y, x, y)</th></tr></thead>";
  const body = document.createElement("tbody");
  state.detections.forEach((d, index) => {
    const n = d.box_normalized;
    const box = document.createElement("div");
    box.className = "box";
    Object.assign(box.style, {
      left: `${n.xmin * 100}%`, top: `${n.ymin * 100}%`,
      width: `${(n.xmax - n.xmin) * 100}%`, height: `${(n.ymax - n.ymin) * 100}%`,
    });
    figure.append(box);
    const row = document.createElement("tr");
    row.tabIndex = 0;
    row.dataset.index = index;
    for (const text of [d.label, percent(d.score), `${d.box.xmin}, ${d.box.ymin}, ${d.box.xmax}, ${d.box.ymax}`]) {
      row.append(Object.assign(document.createElement("td"), { textContent: text }));
    }
    const on = () => box.classList.add("on");
    const off = () => box.classList.remove("on");
    row.addEventListener("mouseenter", on);
    row.addEventListener("mouseleave", off);
    row.addEventListener("focus", on);
    row.addEventListener("blur", off);
    body.append(row);
  });
  if (!state.detections.length) {
    body.innerHTML = "<tr><td colspan='3'>Nothing detected above the minimum score.</td></tr>";
  }
  table.append(body);
  result.replaceChildren(figure, table);
}

async function recognise(event) {
  event.preventDefault();
  if (!chosen) return;
  submit.disabled = true;
  showError("");
  result.replaceChildren();
  const started = performance.now();
  try {
    const { status, body } = await upload(chosen);
    if (status === 401) {
      askForKey("This server needs an API key: enter it above, then try again.");
      setStatus("");
      return;
    }
    if (status >= 400 && status !== 422) throw new Error(body && body.message ? body.message : `HTTP ${status}`);
    const state = await follow(body);
    if (state.state === "failure") throw new Error(`The photo could not be processed: ${state.message}`);
    setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(2)} s with ${state.model}`, true);
    await (kind === "classify" ? showClassification : showDetection)(state);
  } catch (error) {
    setStatus("Failed");
    showError(error.message);
  } finally {
    submit.disabled = !chosen;
  }
}

document.querySelector('[role="tablist"]').addEventListener("keydown", (event) => {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const index = tabs.indexOf(document.activeElement);
  if (index < 0 || !["ArrowLeft", "ArrowRight"].includes(event.key)) return;
  const next = tabs[(index + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  next.focus();
  selectTab(next);
});
for (const tab of document.querySelectorAll('[role="tab"]')) tab.addEventListener("click", () => selectTab(tab));
preview.addEventListener("error", () => { preview.hidden = true; }); // not an image the browser can show
fileInput.addEventListener("change", () => choose(fileInput.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData || {}).files || []].find((f) => f.type.startsWith("image/"));
  if (file) choose(file);
});
modelSelect.addEventListener("change", () => { submit.disabled = !chosen || !modelSelect.value; });
form.addEventListener("submit", recognise);

function loadModels() {
  return fetch(url(api.models), { headers: apiHeaders() })
    .then(async (response) => {
      if (response.status === 401) {
        const stored = localStorage.getItem(API_KEY_STORAGE);
        askForKey(stored ? "That API key was not accepted." : "This server needs an API key.");
        return;
      }
      models = await response.json();
      keyForm.hidden = true;
      showError("");
      fillModels();
    })
    .catch(() => showError("The list of models could not be loaded."));
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(API_KEY_STORAGE, keyInput.value.trim());
  keyInput.value = "";
  loadModels();
});
loadModels();
