// The page of `ddim serve`: forms that post JSON to /api/*, read the streamed progress
// events, and show the PNGs that come back. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const png = (base64) => "data:image/png;base64," + base64;

// Show a PNG at `scale` times its size, its pixels kept sharp.
function show(img, base64, scale) {
  img.onload = () => (img.style.width = img.naturalWidth * scale + "px");
  img.src = png(base64);
}
let info = null;

// ------------------------------------------------------------------ tabs

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll(".tab")) {
      other.setAttribute("aria-selected", String(other === tab));
      $(other.dataset.tab).hidden = other !== tab;
    }
  });
}

// ------------------------------------------------------------------ jobs

// Post `body` to /api/`name` and follow its newline-delimited JSON events: the progress
// bar and status line of `prefix` show them; resolves with the result.
async function runJob(name, body, prefix) {
  const bar = $(prefix + "-progress"), status = $(prefix + "-status");
  status.classList.remove("error");
  status.textContent = "sending…";
  bar.value = 0;
  const response = await fetch("/api/" + name, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(answer.error);
  }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const event = JSON.parse(buffer.slice(0, end));
      buffer = buffer.slice(end + 1);
      if ("queued" in event) {
        status.textContent = event.queued ? `waiting behind ${event.queued} request(s)…` : "running…";
      } else if ("progress" in event) {
        bar.max = event.total;
        bar.value = event.progress;
        status.textContent = `step ${event.progress} of ${event.total}`;
      } else if ("error" in event) {
        throw new Error(event.error);
      } else if ("result" in event) {
        bar.value = bar.max;
        return event.result;
      }
    }
  }
  throw new Error("the server closed the connection before the result");
}

// Run `work` when `form` is submitted, its submit button (and those of the forms that share
// its progress bar, `shared`) disabled meanwhile and any error shown in the status line of
// `prefix`.
function onSubmit(form, prefix, work, shared = []) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const buttons = [form, ...shared].map((f) => f.querySelector("button[type=submit]"));
    for (const button of buttons) button.disabled = true;
    $(prefix + "-status").classList.remove("error");
    try {
      await work(new FormData(form));
    } catch (error) {
      $(prefix + "-status").textContent = error.message;
      $(prefix + "-status").classList.add("error");
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  });
}

// A whole number from a form field, or an error that names the field (parseInt would read
// "1e20" as 1).
function int(data, name) {
  const text = String(data.get(name)).trim(), value = Number(text);
  if (text === "" || !Number.isSafeInteger(value)) {
    throw new Error(`${name} must be a whole number up to ${Number.MAX_SAFE_INTEGER}, got ${text}`);
  }
  return value;
}
const num = (data, name) => Number.parseFloat(data.get(name));

// The class and guidance fields of a form, as the API takes them.
function guide(data, withGuidance) {
  const choice = data.get("class");
  if (!choice) return {};
  const fields = { class: choice === "all" ? "all" : Number.parseInt(choice, 10) };
  if (withGuidance && data.has("guidance")) fields.guidance = num(data, "guidance");
  return fields;
}

const cost = (result) =>
  `${result.model_calls} model calls` +
  (result.grad_passes ? `, ${result.grad_passes} gradient passes` : "") +
  ` in ${result.seconds.toFixed(1)} s`;

// ------------------------------------------------------------------ sample

onSubmit($("sample-form"), "sample", async (data) => {
  const result = await runJob("sample", {
    n: int(data, "n"), steps: int(data, "steps"), eta: num(data, "eta"),
    solver: data.get("solver"), seed: int(data, "seed"), ...guide(data, true),
  }, "sample");
  show($("sample-grid"), result.image, 2);
  $("sample-status").textContent = `${result.n} images: ${cost(result)}`;
});

// ------------------------------------------------------------------ interpolate

let frames = [];
onSubmit($("interpolate-form"), "interpolate", async (data) => {
  const result = await runJob("interpolate", {
    seed_a: int(data, "seed_a"), seed_b: int(data, "seed_b"), frames: int(data, "frames"),
    steps: int(data, "steps"), ...guide(data, false),
  }, "interpolate");
  frames = result.frames;
  const slider = $("interpolate-slider");
  slider.max = frames.length - 1;
  slider.value = 0;
  $("interpolate-frame").src = png(frames[0]);
  show($("interpolate-strip"), result.strip, 3);
  $("interpolate-view").hidden = false;
  $("interpolate-status").textContent = `${frames.length} frames: ${cost(result)}`;
});
$("interpolate-slider").addEventListener("input", (event) => {
  $("interpolate-frame").src = png(frames[Number(event.target.value)]);
});

// ------------------------------------------------------------------ the drawing

// The model's image size, from /api/info (28 until it answers).
let SIZE = 28;
let ink = new Float32Array(SIZE * SIZE);  // 0 black .. 1 white, as MNIST
let region = new Uint8Array(SIZE * SIZE); // 1 where inpainting fills
const canvas = $("draw"), context = canvas.getContext("2d");

function resize(size) {
  SIZE = size;
  ink = new Float32Array(SIZE * SIZE);
  region = new Uint8Array(SIZE * SIZE);
  canvas.width = canvas.height = SIZE;
}

function render() {
  const image = context.createImageData(SIZE, SIZE);
  for (let i = 0; i < ink.length; i++) {
    const v = Math.round(ink[i] * 255);
    image.data.set(region[i] ? [Math.max(v, 150), v * 0.4, v * 0.4, 255] : [v, v, v, 255], 4 * i);
  }
  context.putImageData(image, 0, 0);
}

// A PNG data URL of a 28x28 picture whose pixel i is `value(i)` (0..255, gray).
function pngOf(value) {
  const off = document.createElement("canvas");
  off.width = off.height = SIZE;
  const c = off.getContext("2d"), image = c.createImageData(SIZE, SIZE);
  for (let i = 0; i < SIZE * SIZE; i++) {
    const v = value(i);
    image.data.set([v, v, v, 255], 4 * i);
  }
  c.putImageData(image, 0, 0);
  return off.toDataURL("image/png");
}
const drawingPng = () => pngOf((i) => Math.round(ink[i] * 255));
const maskPng = () => pngOf((i) => (region[i] ? 0 : 255)); // white keeps, black fills

// A round brush at (x, y) in pixel units: ink fades out over its radius, the region is
// marked wherever it touches.
function brush(x, y) {
  const mode = document.querySelector("input[name=brush]:checked").value;
  const radius = mode === "ink" ? 1.6 : 1.8;
  for (let row = Math.floor(y - radius); row <= y + radius; row++) {
    for (let col = Math.floor(x - radius); col <= x + radius; col++) {
      if (row < 0 || col < 0 || row >= SIZE || col >= SIZE) continue;
      const d = Math.hypot(col + 0.5 - x, row + 0.5 - y) / radius;
      if (d > 1) continue;
      const i = row * SIZE + col;
      if (mode === "ink") ink[i] = Math.max(ink[i], Math.min(1, 1.6 * (1 - d * d)));
      else region[i] = 1;
    }
  }
}

let last = null;
function pointAt(event) {
  const box = canvas.getBoundingClientRect();
  return [((event.clientX - box.left) / box.width) * SIZE, ((event.clientY - box.top) / box.height) * SIZE];
}
canvas.addEventListener("pointerdown", (event) => {
  canvas.setPointerCapture(event.pointerId);
  last = pointAt(event);
  brush(...last);
  render();
});
canvas.addEventListener("pointermove", (event) => {
  if (!last) return;
  const [x, y] = pointAt(event), steps = Math.ceil(Math.hypot(x - last[0], y - last[1]) * 4);
  for (let s = 1; s <= steps; s++) {
    brush(last[0] + ((x - last[0]) * s) / steps, last[1] + ((y - last[1]) * s) / steps);
  }
  last = [x, y];
  render();
});
for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => (last = null));
$("clear-drawing").addEventListener("click", () => { ink.fill(0); render(); });
$("clear-region").addEventListener("click", () => { region.fill(0); render(); });
$("invert").addEventListener("click", () => { ink.forEach((v, i) => (ink[i] = 1 - v)); render(); });

// Load an image file into the drawing, resized to 28x28 (with a note when it was resized).
async function upload(file, status) {
  status.classList.remove("error");
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    status.textContent = `${file.name} is not an image this page can read (use a PNG)`;
    status.classList.add("error");
    return false;
  }
  const off = document.createElement("canvas");
  off.width = off.height = SIZE;
  const c = off.getContext("2d");
  c.drawImage(bitmap, 0, 0, SIZE, SIZE);
  const pixels = c.getImageData(0, 0, SIZE, SIZE).data;
  for (let i = 0; i < ink.length; i++) {
    const [r, g, b, a] = pixels.slice(4 * i, 4 * i + 4);
    ink[i] = ((0.299 * r + 0.587 * g + 0.114 * b) * (a / 255)) / 255;
  }
  region.fill(0);
  render();
  const resized = bitmap.width !== SIZE || bitmap.height !== SIZE;
  status.textContent = `${file.name}: ${bitmap.width}×${bitmap.height}` +
    (resized ? ` resized to ${SIZE}×${SIZE}` : "");
  return true;
}
$("upload").addEventListener("change", (e) => upload(e.target.files[0], $("upload-status")));
$("encode-upload").addEventListener("change", async (e) => {
  if (await upload(e.target.files[0], $("encode-status"))) $("encode-input").src = drawingPng();
});

// ------------------------------------------------------------------ edit, inpaint

$("strength").addEventListener("input", (e) => ($("strength-value").textContent = e.target.value));

onSubmit($("edit-form"), "edit", async (data) => {
  const result = await runJob("edit", {
    image: drawingPng(), strength: num(data, "strength"), steps: int(data, "steps"),
    seed: int(data, "seed"), ...guide(data, true),
  }, "edit");
  $("edit-result").src = png(result.image);
  $("edit-status").textContent = `SDEdit: ${cost(result)}`;
}, [$("inpaint-form")]);

onSubmit($("inpaint-form"), "edit", async (data) => {
  if (!region.some((v) => v)) throw new Error("mark the region to fill first (mark region to fill)");
  const result = await runJob("inpaint", {
    image: drawingPng(), mask: maskPng(), method: data.get("method"),
    steps: int(data, "steps"), seed: int(data, "seed"),
  }, "edit");
  $("edit-result").src = png(result.image);
  $("edit-status").textContent = `${data.get("method")}: ${cost(result)}`;
}, [$("edit-form")]);

// ------------------------------------------------------------------ encode, decode

onSubmit($("encode-form"), "encode", async (data) => {
  const image = drawingPng();
  $("encode-input").src = image;
  const solver = data.get("solver");
  const result = await runJob("reconstruct", {
    image, steps: int(data, "steps"), solver,
    fixed_point: solver === "ddim" ? int(data, "fixed_point") : 0,
  }, "encode");
  $("encode-latent").src = png(result.latent);
  $("encode-output").src = png(result.image);
  const residual = result.residual === null ? "" :
    `; largest fixed-point residual ${result.residual.toExponential(2)}`;
  $("encode-status").textContent =
    `per-dim MSE ${result.mse.toExponential(2)} (pixels on [0, 1]): ${cost(result)}${residual}`;
});

// ------------------------------------------------------------------ the model

function fill(select, options) {
  for (const [value, text] of options) select.add(new Option(text, value));
}

// The encodings the Encode tab offers: DDIM's, or one that inverts exactly.
const ENCODINGS = { ddim: "DDIM", edict: "EDICT (exact)", bdia: "BDIA (exact)" };

// Each form starts from its route's defaults, which the server takes from the one
// definition of a run that the library and the CLI share.
const FORMS = {
  sample: "sample-form", interpolate: "interpolate-form", edit: "edit-form",
  inpaint: "inpaint-form", reconstruct: "encode-form",
};

function startFrom(defaults) {
  for (const [route, id] of Object.entries(FORMS)) {
    for (const [name, value] of Object.entries(defaults[route])) {
      const input = $(id).elements.namedItem(name);
      if (input && value !== null) input.value = String(value);
    }
  }
  $("strength-value").textContent = $("strength").value;
}

async function start() {
  info = await (await fetch("/api/info")).json();
  const k = info.classes;
  $("model-info").textContent =
    `${info.model}: ${k ? k + " classes" : "unconditional"}, ${info.image_size}×${info.image_size}, ` +
    `T = ${info.num_timesteps}, on ${info.device} (${info.precision})`;
  for (const select of document.querySelectorAll(".class-select")) {
    const options = [["", "none"]];
    for (let c = 0; c < k; c++) options.push([String(c), String(c)]);
    if (select.closest("#sample-form")) options.push(["all", "all (a row each)"]);
    fill(select, options);
  }
  for (const element of document.querySelectorAll(".conditional")) element.hidden = !k;
  fill($("solver-select"), Object.keys(info.solvers).map((s) => [s, s]));
  fill($("method-select"), info.inpaint_methods.map((m) => [m, m]));
  fill($("encode-solver"), info.encoding_solvers.map((s) => [s, ENCODINGS[s] || s]));
  startFrom(info.defaults);
  resize(info.image_size);
  render();
}
start();
