// The try-it page: each image is its own POST /v1/captions request, so every caption shows as soon as
// its image is done. Only this server is contacted; the API key stays in this tab (sessionStorage).
"use strict";

const DEFAULTS = JSON.parse(document.getElementById("defaults").textContent);
const KEY_STORAGE = "blipq-api-key";
const PARALLEL_REQUESTS = 4; // the server batches across requests; a few in flight keep it busy
const STATUS_REFRESH_MS = 15000;

const waiting = [];
let running = 0;

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showKeyField(reason) {
  document.getElementById("key-section").hidden = false;
  document.getElementById("key-why").textContent = reason;
}

// --- the service's state ------------------------------------------------------------------------

async function refreshStatus() {
  const line = document.getElementById("service");
  try {
    const response = await fetch("/readyz", { headers: authHeaders() });
    const body = await response.json();
    if (response.ok) {
      const parts = [`Ready: ${body.mode} mode`];
      if (body.model) parts.push(`model ${body.model}`);
      if (body.device) parts.push(`on ${body.device}`);
      if (body.workers !== undefined) parts.push(`${body.workers} worker${body.workers === 1 ? "" : "s"}`);
      parts.push(`${body.queue_depth} image${body.queue_depth === 1 ? "" : "s"} waiting`);
      line.textContent = parts.join(", ") + ".";
      line.className = "ready";
    } else {
      line.textContent = `Not ready: ${body.error ? body.error.message : response.statusText}`;
      line.className = "not-ready";
    }
  } catch (error) {
    line.textContent = "The service does not answer.";
    line.className = "not-ready";
  }
}

// Keys are optional: ask only when the server says one is needed.
async function checkKey() {
  const response = await fetch("/v1/jobs?limit=1", { headers: authHeaders() });
  if (response.status === 401) {
    showKeyField(apiKey() ? "That key was refused. Enter another one." : "This service needs an API key.");
    return false;
  }
  if (response.ok && apiKey()) {
    document.getElementById("key-why").textContent = "Key accepted.";
  }
  return true;
}

// --- options ------------------------------------------------------------------------------------

function setUpOptions() {
  const form = document.getElementById("options");
  for (const [name, value] of Object.entries(DEFAULTS)) {
    const input = form.elements.namedItem(name);
    if (!input) continue;
    input.defaultValue = String(value);
    input.value = String(value);
    input.closest(".field").querySelector(".default").textContent = `(default ${JSON.stringify(value)})`;
  }
}

function chosenOptions() {
  const form = document.getElementById("options");
  const options = {};
  for (const [name, value] of Object.entries(DEFAULTS)) {
    const input = form.elements.namedItem(name);
    if (!input) continue;
    if (typeof value !== "number") options[name] = input.value; // an empty prompt means no prompt
    else if (input.value !== "") options[name] = Number(input.value);
  }
  return options;
}

// --- results ------------------------------------------------------------------------------------

function placeholder(text) {
  const box = document.createElement("div");
  box.className = "no-thumbnail";
  box.textContent = text;
  box.setAttribute("aria-hidden", "true");
  return box;
}

function addResult(label, thumbnailUrl) {
  document.getElementById("empty").hidden = true;
  const item = document.createElement("li");
  item.className = "result pending";
  const figure = document.createElement("figure");
  if (thumbnailUrl) {
    const image = document.createElement("img");
    image.alt = ""; // the caption below describes it
    // A file the browser cannot draw either gets the placeholder, not a broken-image icon.
    image.addEventListener("error", () => image.replaceWith(placeholder("no preview")));
    image.src = thumbnailUrl;
    figure.append(image);
  } else {
    figure.append(placeholder("URL"));
  }
  const caption = document.createElement("figcaption");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label;
  const text = document.createElement("span");
  text.className = "caption";
  text.textContent = "Captioning…";
  caption.append(name, text);
  figure.append(caption);
  item.append(figure);
  document.getElementById("results").prepend(item);
  return item;
}

function showCaption(item, caption) {
  item.className = "result done";
  item.querySelector(".caption").textContent = caption;
}

function showError(item, message) {
  item.className = "result failed";
  item.querySelector(".caption").textContent = `Error: ${message}`;
}

// An HTTP error in words, with what to do about it.
function explain(response, body) {
  const message = body && body.error ? body.error.message : response.statusText || `HTTP ${response.status}`;
  if (response.status === 401) {
    showKeyField("This service needs an API key. Enter it above and try again.");
    return `an API key is needed (${message})`;
  }
  if (response.status === 429) {
    const wait = response.headers.get("Retry-After");
    return `too many requests right now; try again${wait ? ` in ${wait} s` : " later"} (${message})`;
  }
  return message;
}

// --- sending ------------------------------------------------------------------------------------

function enqueue(send, item) {
  waiting.push({ send, item });
  pump();
}

function pump() {
  while (running < PARALLEL_REQUESTS && waiting.length) {
    const { send, item } = waiting.shift();
    running += 1;
    caption(send, item).finally(() => {
      running -= 1;
      pump();
    });
  }
}

async function caption(send, item) {
  let response;
  let body = null;
  try {
    response = await send();
    body = await response.json().catch(() => null);
  } catch (error) {
    showError(item, "the service did not answer; is it running?");
    return;
  }
  if (!response.ok) {
    showError(item, explain(response, body));
    return;
  }
  const image = body.images[0];
  if (image.error) showError(item, image.error.message);
  else showCaption(item, image.caption);
}

function captionFile(file) {
  const item = addResult(file.name, URL.createObjectURL(file));
  const options = JSON.stringify(chosenOptions());
  enqueue(() => {
    const form = new FormData();
    form.append("images", file, file.name);
    form.append("options", options);
    return fetch("/v1/captions", { method: "POST", body: form, headers: authHeaders() });
  }, item);
}

function captionUrl(url) {
  const item = addResult(url, null);
  const body = JSON.stringify({ images: [{ url }], options: chosenOptions() });
  enqueue(
    () => fetch("/v1/captions", {
      method: "POST",
      body,
      headers: { "Content-Type": "application/json", ...authHeaders() },
    }),
    item,
  );
}

function captionFiles(files) {
  for (const file of files) captionFile(file);
}

// --- wiring -------------------------------------------------------------------------------------

function setUp() {
  setUpOptions();

  const input = document.getElementById("files");
  input.addEventListener("change", () => {
    captionFiles(input.files);
    input.value = ""; // picking the same file again captions it again
  });

  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    captionFiles(event.dataTransfer.files);
  });

  document.getElementById("url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = document.getElementById("urls");
    const urls = field.value.split("\n").map((line) => line.trim()).filter(Boolean);
    for (const url of urls) captionUrl(url);
    field.value = "";
  });

  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, document.getElementById("api-key").value.trim());
    checkKey();
    refreshStatus();
  });

  refreshStatus();
  setInterval(refreshStatus, STATUS_REFRESH_MS);
  checkKey();
}

setUp();
