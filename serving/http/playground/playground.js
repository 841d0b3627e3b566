// shelley playground: streams POST /v1/completions or /v1/chat/completions (stream +
// logprobs) like any client, and shows each generated token shaded by its probability; hover
// or tap one for its alternatives. n > 1 shows each choice in its own pane. Stop aborts the
// request, and the server frees its batch rows. The chat mode's conversation editor and the
// token view are in chat.js; the structured mode's format and grammar trace in structured.js.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP = 5;                 // alternatives asked for per token (the server's limit)
let controller = null;         // the running request's AbortController
let panes = [];                // per choice: its element, text and tokens not shown yet, its UTF-8 decoder
let pinned = null;             // the token span whose tooltip stays open (tap / click)
let model = null;              // GET /v1/models' entry
const chatMode = () => $("mode-chat").checked;

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
    model = m;
    $("model").textContent = `${m.id} · context ${m.context_length} tokens · up to ${m.max_new_tokens} new`;
    $("max-tokens").max = m.max_new_tokens;
    if (typeof onModel === "function") onModel(m);
  } catch (e) {
    $("model").textContent = "cannot reach the server";
  }
}

// "11:-100, 42:5" -> {"11": -100, "42": 5}; throws on anything else
function logitBias(text) {
  const bias = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const m = part.match(/^(\d+)\s*:\s*(-?\d+(\.\d+)?)$/);
    if (!m) throw new Error(`logit bias: write token id:bias pairs, e.g. 11:-100 (got "${part}")`);
    bias[m[1]] = Number(m[2]);
  }
  return bias;
}

function request() {
  const body = {
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    top_k: Number($("top-k").value),
    n: Number($("n").value) || 1,
    presence_penalty: Number($("presence-penalty").value),
    frequency_penalty: Number($("frequency-penalty").value),
    repetition_penalty: Number($("repetition-penalty").value),
    min_tokens: Number($("min-tokens").value),
    logit_bias: logitBias($("logit-bias").value),
    stream: true,
    stream_options: { include_usage: true },
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("ignore-eos").checked) body.ignore_eos = true;
  if (chatMode()) return Object.assign(body, chatBody(), { logprobs: true, top_logprobs: TOP });
  Object.assign(body, { prompt: $("prompt").value, logprobs: TOP });
  return structuredMode() ? Object.assign(body, structuredBody()) : body;
}

// A chat chunk's choice in the completions shape addChoice reads.
function asCompletion(choice) {
  const content = choice.logprobs && choice.logprobs.content;
  return {
    index: choice.index, text: (choice.delta && choice.delta.content) || "", finish_reason: choice.finish_reason,
    logprobs: content ? {
      tokens: content.map((t) => t.token), token_logprobs: content.map((t) => t.logprob),
      top_logprobs: content.map((t) => Object.fromEntries(t.top_logprobs.map((a) => [a.token, a.logprob]))),
    } : null,
  };
}

// ---- rendering -------------------------------------------------------------------------
const shown = (t) => JSON.stringify(t);            // quotes and escapes make spaces visible
const percent = (lp) => (100 * Math.exp(lp)).toFixed(lp > Math.log(0.001) ? 1 : 3) + "%";

function tokenSpan(text, items) {
  const span = document.createElement("span");
  span.className = "tok" + (text.startsWith("bytes:") ? " bytes" : "") +
    (items.some((it) => it.trace && !it.trace.wanted.allowed) ? " overruled" : "");   // the grammar masked the model's choice
  const p = Math.exp(items.reduce((s, it) => s + it.logprob, 0));   // the group's joint probability
  span.style.setProperty("--a", (0.06 + 0.69 * Math.sqrt(p)).toFixed(3));   // the legend's scale
  span.textContent = text.replace(/\n/g, "↵\n");
  span.tabIndex = 0;
  span.items = items;
  return span;
}

// A token's bytes from its text as the server spells it ("bytes:\xe2\x80" for bytes that
// are not UTF-8 on their own).
const utf8 = new TextEncoder();
function tokenBytes(token) {
  if (!token.startsWith("bytes:")) return utf8.encode(token);
  return Uint8Array.from(token.slice(6).split("\\x").filter(Boolean), (h) => parseInt(h, 16));
}

// One streamed choice: its text and, per token, {token, logprob, top}. A chunk may carry
// several tokens (the server merges them when the client falls behind); each gets its own
// span, except tokens that spell one character together (its UTF-8 bytes), which share one.
// The tokens' bytes go through a streaming UTF-8 decoder, as they do on the server, and a
// span is shown once the server's text has caught up with it (it holds text back near a
// stop string). If the two ever disagree, what is pending is shown as one span and the
// decoder starts afresh; the last chunk shows whatever is left.
function addChoice(choice) {
  const lp = choice.logprobs;
  const trace = choice.shelley_grammar_trace;   // structured mode: one step per token
  const items = lp ? lp.tokens.map((t, i) => ({ token: t, logprob: lp.token_logprobs[i], top: lp.top_logprobs[i],
                                                 trace: trace ? trace[i] : null })) : [];
  if (trace && trace.length) addTrace(choice.index || 0, trace);
  const pane = panes[choice.index || 0];
  const out = pane.el;
  const pending = pane.pending;
  pane.reply += choice.text;
  const flush = () => {
    if (pending.items.length) out.append(tokenSpan(pending.text || pending.decoded, pending.items));
    else if (pending.text) out.append(document.createTextNode(pending.text));
    Object.assign(pending, { text: "", items: [], decoded: "" });
    pane.decoder = new TextDecoder();
  };
  pending.text += choice.text;
  for (const it of items) {
    pending.items.push(it);
    pending.decoded += pane.decoder.decode(tokenBytes(it.token), { stream: true });
    if (pending.decoded && pending.text.startsWith(pending.decoded)) {
      out.append(tokenSpan(pending.decoded, pending.items));
      pending.text = pending.text.slice(pending.decoded.length);
      pending.items = [];
      pending.decoded = "";
    } else if (pending.decoded && !pending.decoded.startsWith(pending.text)) {
      flush();   // out of step: show what the server sent, resynchronise
    }
  }
  if (choice.finish_reason || !lp) flush();
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
    tip.append(h, ...(it.trace ? [traceLine(it.trace)] : []), table);
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

// One pane per choice, each starting with the text the model continues (the prompt, or the
// rendered conversation in chat mode).
function clearOutput() {
  pinned = null;
  $("tip").hidden = true;
  $("error").hidden = true;
  const n = Math.min(8, Math.max(1, Number($("n").value) || 1));
  const start = chatMode() ? renderedText() : $("prompt").value;
  panes = [];
  const els = [];
  for (let i = 0; i < n; i++) {
    const el = document.createElement("div");
    el.className = "pane";
    const echo = document.createElement("span");
    echo.className = "prompt";
    if (i === 0) echo.id = "prompt-echo";
    echo.textContent = start;
    el.append(echo);
    els.push(el);
    panes.push({ el, pending: { text: "", items: [], decoded: "" }, decoder: new TextDecoder(), reply: "" });
  }
  $("output").replaceChildren(...els);
  clearTrace();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function generate(event) {
  event.preventDefault();
  if (controller) return;
  $("status").textContent = "waiting for the first token…";   // never the last request's status
  clearTimeout(tokenTimer);
  await refreshTokens();   // the token view (and in chat mode the echo) is what this request sends
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
  const chat = chatMode();
  try {
    const r = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
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
        if (chunk.error) { showError(chunk.error.message); continue; }
        for (const raw of chunk.choices) {   // none in the final usage chunk
          const choice = chat ? asCompletion(raw) : raw;
          count += addChoice(choice);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      report();
    }
    if (chat && finish) chatReplied(panes[0].reply);
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
