// shelley playground: streams POST /v1/completions (stream + logprobs) like any client, and
// shows each generated token shaded by its probability; hover or tap one for its
// alternatives. Stop aborts the request, and the server frees its batch row.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP = 5;                 // alternatives asked for per token (the server's limit)
let controller = null;         // the running request's AbortController
let pending = { text: "", items: [] };   // tokens whose text the server still holds back
let pinned = null;             // the token span whose tooltip stays open (tap / click)

function authHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: authHeaders() });
    if (r.status === 401) {
      $("key-box").hidden = false;
      $("model").textContent = "this server needs an API key";
      return;
    }
    const m = (await r.json()).data[0];
    $("model").textContent = `${m.id} · context ${m.context_length} tokens · up to ${m.max_new_tokens} new`;
    $("max-tokens").max = m.max_new_tokens;
  } catch (e) {
    $("model").textContent = "cannot reach the server";
  }
}

function request() {
  const body = {
    prompt: $("prompt").value,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    top_k: Number($("top-k").value),
    logprobs: TOP,
    stream: true,
    stream_options: { include_usage: true },
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("ignore-eos").checked) body.ignore_eos = true;
  return body;
}

// ---- rendering -------------------------------------------------------------------------
const shown = (t) => JSON.stringify(t);            // quotes and escapes make spaces visible
const percent = (lp) => (100 * Math.exp(lp)).toFixed(lp > Math.log(0.001) ? 1 : 3) + "%";

function tokenSpan(text, items) {
  const span = document.createElement("span");
  span.className = "tok" + (text.startsWith("bytes:") ? " bytes" : "");
  const p = Math.exp(items.reduce((s, it) => s + it.logprob, 0));   // the group's joint probability
  span.style.setProperty("--a", (0.06 + 0.69 * Math.sqrt(p)).toFixed(3));   // the legend's scale
  span.textContent = text.replace(/\n/g, "↵\n");
  span.tabIndex = 0;
  span.items = items;
  return span;
}

// One streamed choice: its text and, per token, {token, logprob, top}. A token's own text can
// differ from what the server sends (a character spelled in several byte tokens, text held
// back near a stop string): such tokens are kept until the text arrives, then shown together.
function addChoice(choice) {
  const lp = choice.logprobs;
  const items = lp ? lp.tokens.map((t, i) => ({ token: t, logprob: lp.token_logprobs[i], top: lp.top_logprobs[i] })) : [];
  pending.text += choice.text;
  pending.items.push(...items);
  const out = $("output");
  if (pending.items.length && pending.items.map((it) => it.token).join("") === pending.text) {
    for (const it of pending.items) out.append(tokenSpan(it.token, [it]));
  } else if (pending.text) {
    out.append(pending.items.length ? tokenSpan(pending.text, pending.items) : document.createTextNode(pending.text));
  } else {
    return items.length;
  }
  pending = { text: "", items: [] };
  return items.length;
}

function showTip(span) {
  const tip = $("tip");
  tip.replaceChildren();
  for (const it of span.items) {
    const h = document.createElement("h2");
    h.textContent = `${shown(it.token)}  ${percent(it.logprob)}`;
    const table = document.createElement("table");
    const rows = Object.entries(it.top || {});
    if (!rows.some(([t]) => t === it.token)) rows.push([it.token, it.logprob]);
    for (const [t, lp] of rows) {
      const tr = table.insertRow();
      if (t === it.token) tr.className = "chosen";
      tr.insertCell().textContent = shown(t);
      tr.cells[0].className = "t";
      const bar = tr.insertCell();
      bar.className = "bar";
      const i = document.createElement("i");
      i.style.width = (100 * Math.exp(lp)).toFixed(1) + "%";
      bar.append(i);
      tr.insertCell().textContent = percent(lp);
      tr.cells[2].className = "p";
    }
    tip.append(h, table);
  }
  const r = span.getBoundingClientRect();
  tip.hidden = false;
  const left = Math.min(r.left + window.scrollX, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8);
  tip.style.left = Math.max(8, left) + "px";
  tip.style.top = r.bottom + window.scrollY + 6 + "px";
}

function hideTip() {
  if (!pinned) $("tip").hidden = true;
}

// ---- one completion ----------------------------------------------------------------------
function setRunning(running) {
  $("generate").disabled = running;
  $("stop").disabled = !running;
}

function clearOutput() {
  pending = { text: "", items: [] };
  pinned = null;
  $("tip").hidden = true;
  $("error").hidden = true;
  const echo = $("prompt-echo");
  echo.textContent = $("prompt").value;
  $("output").replaceChildren(echo);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function generate(event) {
  event.preventDefault();
  if (controller) return;
  clearOutput();
  controller = new AbortController();
  setRunning(true);
  const t0 = performance.now();
  let count = 0, finish = "", id = "";
  const report = () => {
    const seconds = (performance.now() - t0) / 1000;
    $("status").textContent = `${count} tokens · ${(count / Math.max(seconds, 1e-3)).toFixed(0)} tokens/s` +
      (finish ? ` · ${finish}` : "") + (id ? ` · ${id}` : "");
  };
  try {
    const r = await fetch("/v1/completions", {
      method: "POST", headers: authHeaders(), body: JSON.stringify(request()), signal: controller.signal,
    });
    id = r.headers.get("x-request-id") || "";
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      if (r.status === 401) $("key-box").hidden = false;
      finish = `error ${r.status}`;
      showError((body.error && body.error.message) || `HTTP ${r.status}`);
      return;
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        const choice = chunk.choices[0];
        if (!choice) continue;               // the final usage chunk
        count += addChoice(choice);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      report();
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else showError(String(e));
  } finally {
    controller = null;
    setRunning(false);
    report();
  }
}

// ---- wiring --------------------------------------------------------------------------------
for (const [id, digits] of [["temperature", 2], ["top-p", 2]]) {
  const show = () => { $(id + "-value").textContent = Number($(id).value).toFixed(digits); };
  $(id).addEventListener("input", show);
  show();
}
$("form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("api-key").addEventListener("change", loadModel);
const output = $("output");
output.addEventListener("mouseover", (e) => { if (e.target.items && !pinned) showTip(e.target); });
output.addEventListener("mouseout", (e) => { if (e.target.items) hideTip(); });
output.addEventListener("focusin", (e) => { if (e.target.items && !pinned) showTip(e.target); });
output.addEventListener("focusout", hideTip);
output.addEventListener("click", (e) => {            // tap: pin the tooltip; tap again to close
  if (pinned) pinned.classList.remove("pinned");
  if (!e.target.items || e.target === pinned) { pinned = null; $("tip").hidden = true; return; }
  pinned = e.target;
  pinned.classList.add("pinned");
  showTip(pinned);
});
loadModel();
