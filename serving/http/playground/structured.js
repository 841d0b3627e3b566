// shelley playground, structured mode: the prompt is completed under a response_format (a
// JSON schema by default; a regex, a choice list, a grammar), and the server is asked for its
// grammar trace (`shelley_grammar_trace`, docs/api.md): per token, the model's own top token
// before the grammar's mask and the token drawn under it, and how many tokens the mask let
// through, and the most likely of those. Tokens where the grammar overruled the model are
// underlined in the output, and the table under it lists every step.
"use strict";

const PERSON = {
  type: "object", additionalProperties: false, required: ["name", "age", "mood"],
  properties: {
    name: { type: "string", maxLength: 12 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    mood: { enum: ["merry", "sad", "wroth"] },
  },
};
const EXAMPLES = {
  json_schema: { type: "json_schema", json_schema: { name: "person", schema: PERSON } },
  json_object: { type: "json_object" },
  choice: { type: "choice", choice: ["To be", "Not to be"] },
  regex: { type: "regex", regex: "[A-Z][a-z]+, [0-9]{1,2} (May|June) 15[0-9]{2}" },
};
const structuredMode = () => $("mode-structured").checked;
let traced = { steps: 0, overruled: 0, allowed: 0 };

function showExample() {
  $("response-format").value = JSON.stringify(EXAMPLES[$("format-example").value], null, 2);
}

// The structured request's own fields (playground.js adds the prompt and the sampling controls).
function structuredBody() {
  let format;
  try {
    format = JSON.parse($("response-format").value);
  } catch (e) {
    throw new Error(`response_format is not JSON: ${e.message}`);
  }
  return { response_format: format, shelley_grammar_trace: true };
}

function clearTrace() {
  traced = { steps: 0, overruled: 0, allowed: 0 };
  $("trace-rows").replaceChildren();
  $("trace-summary").textContent = "";
  $("trace-box").hidden = !structuredMode();
}

const pct = (lp) => (100 * Math.exp(lp)).toFixed(lp > Math.log(0.001) ? 1 : 3) + "%";

// One table row per token sampled under the grammar (choice i's, when n > 1).
function addTrace(index, steps) {
  const rows = $("trace-rows");
  for (const s of steps) {
    traced.steps += 1;
    traced.allowed += s.allowed_tokens;
    const tr = rows.insertRow();
    if (!s.wanted.allowed) {
      tr.className = "overruled";
      traced.overruled += 1;
    }
    const cells = [
      panes.length > 1 ? `${index}.${traced.steps}` : String(traced.steps),
      `${JSON.stringify(s.sampled.token)} ${pct(s.sampled.logprob)}`,
      `${JSON.stringify(s.wanted.token)} ${pct(s.wanted.logprob)}` + (s.wanted.allowed ? "" : " ✗ masked"),
      String(s.allowed_tokens),
      pct(s.allowed_logprob),
      s.allowed_top.map((a) => `${JSON.stringify(a.token)} ${pct(a.logprob)}`).join("  "),
    ];
    for (const c of cells) tr.insertCell().textContent = c;
  }
  $("trace-summary").textContent = `the grammar overruled the model at ${traced.overruled} of ${traced.steps} tokens; ` +
    `it allowed ${(traced.allowed / Math.max(traced.steps, 1)).toFixed(1)} tokens a step on average`;
}

// The tooltip's line for one token: what the model wanted, what the mask allowed.
const tokensAllowed = (n) => `${n} token${n === 1 ? "" : "s"}`;

function traceLine(step) {
  const p = document.createElement("p");
  p.className = "trace-line";
  p.textContent = step.wanted.allowed && step.wanted.token_id === step.sampled.token_id
    ? `the model's own first choice; the grammar allowed ${tokensAllowed(step.allowed_tokens)}`
    : `the model wanted ${JSON.stringify(step.wanted.token)} (${pct(step.wanted.logprob)})` +
      (step.wanted.allowed ? "" : ", which the grammar masked") +
      `; it allowed ${tokensAllowed(step.allowed_tokens)}, ${pct(step.allowed_logprob)} of the model's probability`;
  return p;
}

$("format-example").addEventListener("change", showExample);
showExample();
