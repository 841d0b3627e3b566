// shelley playground, chat mode and the token view. The conversation is a list of messages
// (role, speaker, words); the page asks POST /tokenize for exactly what the chat template
// makes of it (the rendered text and its tokens, each with its id) and shows both, so what
// the model reads is never hidden. After a reply, it joins the conversation as the
// character's message and a new empty message waits for yours.
"use strict";

const ROLES = ["system", "user", "assistant"];
let tokenTimer = null;         // debounce for /tokenize
let tokenCall = 0;             // answers to older calls are dropped
let rendered = "";             // the last rendering of the conversation

function renderedText() {
  return rendered;
}

function addMessage(role = "user", content = "", name = "") {
  const li = document.createElement("li");
  li.className = "message";
  const select = document.createElement("select");
  select.className = "role";
  select.setAttribute("aria-label", "role");
  for (const r of ROLES) select.add(new Option(r, r, false, r === role));
  const who = document.createElement("input");
  who.className = "name";
  who.setAttribute("list", "speakers");
  who.placeholder = "speaker (optional)";
  who.value = name;
  const text = document.createElement("textarea");
  text.className = "content";
  text.rows = 2;
  text.spellcheck = false;
  text.value = content;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove secondary";
  remove.textContent = "×";
  remove.title = "remove this message";
  remove.addEventListener("click", () => { li.remove(); refreshTokens(); });
  li.append(select, who, text, remove);
  $("messages").append(li);
  return li;
}

function conversation() {
  return [...$("messages").querySelectorAll("li.message")]
    .map((li) => {
      const m = { role: li.querySelector(".role").value, content: li.querySelector(".content").value };
      const name = li.querySelector(".name").value.trim();
      if (name) m.name = name;
      return m;
    })
    .filter((m) => m.content.trim());
}

function templateKwargs() {
  const kwargs = {};
  for (const [id, key] of [["user-name", "user_name"], ["assistant-name", "assistant_name"]]) {
    const v = $(id).value.trim();
    if (v) kwargs[key] = v;
  }
  return kwargs;
}

// The chat request's own fields (playground.js adds the sampling controls).
function chatBody() {
  const body = { messages: conversation(), chat_template_kwargs: templateKwargs() };
  if ($("truncate").checked) body.truncate_prompt_tokens = -1;
  return body;
}

function chatReplied(text) {
  if (text.trim()) addMessage("assistant", text.trim(), $("assistant-name").value.trim());
  addMessage("user").querySelector(".content").focus();
  refreshTokens();
}

function onModel(m) {
  const list = $("speakers");
  list.replaceChildren(...(m.chat_speakers || []).map((s) => new Option(s)));
  if (m.chat_speakers && m.chat_speakers.length >= 2) {
    $("user-name").placeholder = m.chat_speakers[0];
    $("assistant-name").placeholder = m.chat_speakers[1];
  }
  refreshTokens();
}

// ---- the token view ------------------------------------------------------------------------
function showTokens(view) {
  const box = $("tokens");
  box.replaceChildren(...view.tokens.map((id, i) => {
    const t = document.createElement("span");
    t.className = "t";
    const text = document.createElement("span");
    text.textContent = view.token_strs[i].replace(/\n/g, "↵").replace(/ /g, "␣");
    const sub = document.createElement("sub");
    sub.textContent = id;
    t.append(text, sub);
    t.title = `token ${id}: ${JSON.stringify(view.token_strs[i])}`;
    return t;
  }));
  $("token-count").textContent = `${view.count} of ${view.max_model_len}`;
  $("token-count").classList.toggle("over", view.count > view.max_model_len);
}

async function refreshTokens() {
  const call = ++tokenCall;
  const body = chatMode() ? { messages: conversation(), chat_template_kwargs: templateKwargs() }
    : { prompt: $("prompt").value };
  if (chatMode() && !body.messages.length) {
    rendered = "";
    $("rendered").textContent = "";
    showTokens({ tokens: [], token_strs: [], count: 0, max_model_len: model ? model.context_length : 0 });
    return;
  }
  try {
    const r = await fetch("/tokenize", { method: "POST", headers: authHeaders(), body: JSON.stringify(body) });
    const view = await r.json();
    if (call !== tokenCall) return;
    if (!r.ok) {
      $("token-count").textContent = (view.error && view.error.message) || `HTTP ${r.status}`;
      return;
    }
    if (chatMode()) {
      rendered = view.prompt;
      $("rendered").textContent = view.prompt;
    }
    showTokens(view);
  } catch (e) {
    $("token-count").textContent = "cannot reach the server";
  }
}

function soon() {
  clearTimeout(tokenTimer);
  tokenTimer = setTimeout(refreshTokens, 200);
}

// ---- wiring --------------------------------------------------------------------------------
for (const mode of ["mode-complete", "mode-chat", "mode-structured"]) {
  $(mode).addEventListener("change", () => {
    $("chat-box").hidden = !chatMode();
    $("complete-box").hidden = chatMode();
    $("structured-box").hidden = !structuredMode();   // structured.js; it completes the prompt
    refreshTokens();
  });
}
$("add-message").addEventListener("click", () => { addMessage("user").querySelector(".content").focus(); soon(); });
$("prompt").addEventListener("input", soon);
$("messages").addEventListener("input", soon);
$("messages").addEventListener("change", soon);
$("user-name").addEventListener("input", soon);
$("assistant-name").addEventListener("input", soon);
addMessage("user", "Good morrow. What news?");
