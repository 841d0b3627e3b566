"""Run our GGUF export in the real llama.cpp and compare it with ONNX Runtime: `make gguf-test`.

    make gguf-test                       (needs cmake, a C++ compiler and the package index once)
    python tests/gguf_check.py [--work DIR] [--keep]

For each case (GPT-2's block with each tokenizer, char and bpe; the modern block, qwen3, with
grouped KV heads and an untied head: llama.cpp's qwen3 architecture) it trains a tiny model on
the shakespeare corpus (context 128, so a prompt and 64 new tokens never reach it and llama.cpp
never shifts its context), exports the ONNX artifact (the serving runtime) and the GGUF file at
f32, f16 and q8_0, and runs each GGUF in llama-server (tests/llama_cpp.py builds it once per CPU,
then reuses it):
  tokenize  llama.cpp's /tokenize of held-out text (plus characters outside the vocabulary,
            newlines, runs of spaces, a tab and the end-of-text token) equals our tokenizer's
            ids, and /detokenize of our ids gives the text back (f32 file; the vocabulary is
            the same in every type)
  greedy    llama.cpp's greedy continuation of several prompts, 64 tokens each (end-of-text
            masked on both sides, as llama.cpp's ignore_eos does), against ONNX Runtime's:
            identical tokens until the first difference; along ONNX Runtime's path (each step
            fed ONNX Runtime's tokens so far, as export.verify's int8 check does) the top-1
            agreement and the largest |Δ logprob| of llama.cpp's top 5 tokens.
  f32       64 of 64 for every prompt, every step agreeing, |Δ logprob| <= 5e-3; the one
            exception is a near tie (ONNX Runtime's top two within 1e-2), which llama.cpp's
            float16 GELU table can flip: it is shown as "38~" (identical for 38 tokens, then
            a near tie), never hidden
  f16, q8_0 reported; top-1 agreement at least export.quantize's int8 floor (0.9).
  chat      (f32 file) the run's play-script chat template, carried as tokenizer.chat_template:
            the prompt llama-server --jinja renders (/apply-template, llama.cpp's own Jinja
            engine) from a system, user, assistant, user conversation equals, byte for byte, the
            one shelley's server renders (serving/chat.py); the Modelfile's TEMPLATE run in Go's
            text/template (tests/ollama_template/main.go, the engine Ollama runs it in) gives the
            same bytes (skipped, said so, where no `go` is installed); and a greedy
            /v1/chat/completions reply with the chat's stop equals ONNX Runtime's greedy reply
            cut at its first stop, finish_reason "stop".
Prints a table; exits 1 when a check fails, 2 when llama-server cannot be built (the line
says what is missing). Not part of `make test`: it compiles llama.cpp (minutes, once).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from llama_cpp import LlamaServer, llama_server_binary, run_logged  # noqa: E402

from core.errors import run_main  # noqa: E402

STEPS = 64
PROMPTS = ["ROMEO:", "Shall I compare thee to a summer's day?\n", "KING HENRY.\nO God",
           "What light through yonder", "The café’s ñ 🦜\n"]
EDGE_TEXT = ("Thy café, naïve ‘friend’ — 日本 🦜\n\n\n   three spaces,  two\ttab.\r\n"
             "<|endoftext|>The next document<|endoftext|>\n  ")
HELD_CHARS = 6000
# llama.cpp's GELU reads a float16 table (ggml-cpu's GGML_GELU_FP16). At f32, with flash
# attention off and an f32 KV cache, max |Δlogprob| against ONNX Runtime measured 0.9e-3 to
# 1.4e-3; against PyTorch with that table emulated, 1.6e-4: the table is most of it.
F32_LOGPROB_TOL = 5e-3
NEAR_TIE = 2 * F32_LOGPROB_TOL   # top two closer than this may swap: reported with "~", not failed
# cpu-small's optimizer, smaller and with a context of 128: ~20 s each on 2 cores
TRAIN_ARGS = ["--preset", "cpu-small", "--corpus", "shakespeare", "--n-layer", "2", "--n-head", "2",
              "--n-embd", "64", "--block-size", "128", "--batch-size", "16", "--max-iters", "250",
              "--eval-interval", "125", "--eval-iters", "2", "--seed", "0", "--sample-tokens", "8",
              "--device", "cpu", "--threads", "2"]
CHAR, BPE = ["--tokenizer", "char"], ["--tokenizer", "bpe", "--vocab-size", "512"]
CASES = {"gpt-char": ["--model", "gpt", *CHAR], "gpt-bpe": ["--model", "gpt", *BPE],
         "qwen3-bpe": ["--model", "qwen3", "--n-kv-head", "1", "--no-tie-embeddings", *BPE]}
GGUF_TYPES = ("f32", "f16", "q8_0")
SERVER_ARGS = ["-np", "1", "-t", "2", "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-webui", "--jinja"]
# short, so the rendered play (81 characters) and a reply of CHAT_STEPS tokens fit the context of 128
CHAT = [{"role": "system", "content": "Venice."}, {"role": "user", "content": "Who is there?"},
        {"role": "assistant", "content": "A friend."}, {"role": "user", "content": "What friend?"}]
CHAT_STEPS = 32
# what else the template does, rendered by llama.cpp's Jinja engine too: lines stripped and blank
# ones dropped, speakers named by the messages and by chat_template_kwargs, content as text parts
CHAT_EDGES = [([{"role": "user", "content": "  Good morrow.  \n\n\t\n Is it day?\r\n"}], {}),
              ([{"role": "user", "content": "Hi", "name": "Romeo"}, {"role": "assistant", "content": "Ho", "name": "Juliet"},
                {"role": "user", "content": [{"type": "text", "text": "Ay me!"}, {"type": "text", "text": "Sad."}]}], {}),
              ([{"role": "user", "content": "Hi"}], {"assistant_name": "Juliet", "user_name": "Romeo"})]


@dataclass
class Row:
    case: str
    gguf_type: str
    tokenize: str = "-"
    chat: str = "-"
    stopped: bool = False          # the chat reply ended at the chat's stop (not at its length)
    greedy: str = ""
    top1: float = 0.0
    dlogprob: float = 0.0
    ok: bool = True


def train_and_export(kind: str, work: Path) -> tuple[Path, Path, dict[str, Path]]:
    """(run dir, ONNX artifact dir, GGUF type -> model.gguf) for one case."""
    run, art, log = work / f"run-{kind}", work / f"art-{kind}", work / f"{kind}.log"
    py = [sys.executable, "-m"]

    def sh(cmd: list[str]) -> None:
        run_logged(py + cmd, log, f"python -m {cmd[0]}", cwd=ROOT)
    sh(["training.train", *TRAIN_ARGS, *CASES[kind], "--out", str(run)])
    sh(["export", "--run", str(run), "--out", str(art), "--force"])
    ggufs = {}
    for t in GGUF_TYPES:
        out = work / f"gguf-{kind}-{t}"
        sh(["export", "--format", "gguf", "--run", str(run), "--out", str(out), "--gguf-type", t, "--force"])
        ggufs[t] = out / "model.gguf"
    return run, art, ggufs


def held_text() -> str:
    """The end of the corpus (the validation split's tail) and the edge cases."""
    from training.data import load_corpus
    docs = load_corpus("shakespeare")
    return docs[-1][-HELD_CHARS:] + EDGE_TEXT


@dataclass
class Continuation:
    """ONNX Runtime's greedy continuation of one prompt, with its log-probabilities."""
    prompt: list[int]
    tokens: list[int]
    logprobs: np.ndarray           # (STEPS, V): log-softmax of the raw logits at each step
    margins: np.ndarray            # (STEPS,): how far the chosen token's logprob is above the next

    def decisive(self, k: int) -> bool:
        """A difference at step k is a failure unless ONNX Runtime's top two are a near tie,
        which llama.cpp's own float16 GELU table may flip."""
        return bool(self.margins[k] > NEAR_TIE)


def ort_runtime(art: Path):
    """The serving runtime on one slot, one thread: every ONNX Runtime reference here."""
    from core.artifact import load_artifact
    from serving.engine.runtime import Runtime
    return Runtime(load_artifact(art), device="cpu", threads=1, precision="fp32", slots=1)


def ort_greedy_paths(rt, prompts: list[list[int]], eos: int, steps: int = STEPS) -> list[Continuation]:
    """ONNX Runtime's greedy tokens for each prompt, end-of-text masked (llama.cpp's ignore_eos)."""
    from core.logprobs import log_softmax
    from export.verify import ort_greedy

    paths = []
    for prompt in prompts:
        seen: list[np.ndarray] = []
        margins: list[float] = []

        def choose(logits: np.ndarray) -> int:
            lp = log_softmax(logits[None])[0]
            seen.append(lp)
            lp = lp.copy()
            lp[eos] = -np.inf
            second, first = np.partition(lp, -2)[-2:]
            margins.append(float(first - second))
            return int(lp.argmax())

        tokens = ort_greedy(rt, prompt, steps, choose)
        paths.append(Continuation(prompt, tokens, np.stack(seen), np.array(margins)))
    return paths


GREEDY = {"temperature": 0, "top_k": 1, "repeat_penalty": 1.0, "ignore_eos": True,
          "return_tokens": True, "cache_prompt": True}
TOP_N = 5


def llama_greedy(srv: LlamaServer, prompt: str) -> list[int]:
    return srv.post("/completion", {"prompt": prompt, "n_predict": STEPS, **GREEDY})["tokens"]


def along(srv: LlamaServer, path: Continuation) -> tuple[list[int], float]:
    """Fed ONNX Runtime's tokens so far, at each step: does llama.cpp pick ONNX Runtime's next
    token, and how far apart are the log-probabilities of llama.cpp's top tokens?
    Returns (the steps where the tokens differ, max |Δ logprob|)."""
    differ, worst = [], 0.0
    for k, want in enumerate(path.tokens):
        got = srv.post("/completion", {"prompt": path.prompt + path.tokens[:k], "n_predict": 1,
                                       "n_probs": TOP_N, **GREEDY})
        if got["tokens"] != [want]:
            differ.append(k)
        for top in got["completion_probabilities"][0]["top_logprobs"]:
            worst = max(worst, abs(top["logprob"] - float(path.logprobs[k, top["id"]])))
    return differ, worst


def check_tokenize(srv: LlamaServer, tok, text: str) -> tuple[bool, str]:
    from training.tokenizer import encode
    ours = encode(tok, text)
    theirs = srv.post("/tokenize", {"content": text})["tokens"]
    same = sum(a == b for a, b in zip(ours, theirs))
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    plain = text.replace("<|endoftext|>", "")
    back = srv.post("/detokenize", {"tokens": encode(tok, plain)})["content"]
    ok = ours == theirs and back == plain
    detail = f"{same}/{len(ours)} ids" + ("" if len(ours) == len(theirs) else f" (llama.cpp {len(theirs)})")
    if first is not None:
        detail += f", first difference at {first}"
    if back != plain:
        detail += ", detokenize differs"
    return ok, detail


def compare(srv: LlamaServer, row: "Row", paths: list[Continuation]) -> bool:
    """Fill row's greedy, top-1 and |Δ logprob| columns; False if a decisive step differs."""
    same, decisive, differ = [], True, 0
    for text, path in zip(PROMPTS, paths):
        got = llama_greedy(srv, text)
        d = next((i for i, (a, b) in enumerate(zip(got, path.tokens)) if a != b), STEPS)
        steps, worst = along(srv, path)
        decisive &= (d == STEPS or not path.decisive(d)) and not any(map(path.decisive, steps))
        same.append(f"{d}{'' if d == STEPS or path.decisive(d) else '~'}")
        differ, row.dlogprob = differ + len(steps), max(row.dlogprob, worst)
    row.greedy = " ".join(same)
    row.top1 = 1 - differ / (STEPS * len(PROMPTS))
    return decisive


def ollama_render(modelfile: Path, messages: list[dict]) -> str | None:
    """The Modelfile's TEMPLATE rendered by Go's text/template; None where `go` is missing."""
    go = shutil.which("go")
    if go is None:
        return None
    from core.files import cache_dir

    env = {**os.environ}
    if not (env.get("GOCACHE") or env.get("HOME") or env.get("XDG_CACHE_HOME")):
        env["GOCACHE"] = str(cache_dir() / "go-build")      # go needs a build cache somewhere
    proc = subprocess.run([go, "run", str(ROOT / "tests" / "ollama_template" / "main.go"), str(modelfile)],
                          input=json.dumps(messages), capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"go run tests/ollama_template/main.go failed: {proc.stderr.strip()}")
    return proc.stdout


def check_chat(srv: LlamaServer, run: Path, modelfile: Path, rt, tok) -> tuple[bool, str, bool]:
    """The chat template in llama.cpp's Jinja engine and in Go's text/template against shelley's
    own rendering, and a chat reply against ONNX Runtime's greedy reply cut at the stop."""
    from core.chat import read_chat
    from serving.chat import Chat, check_messages
    from training.tokenizer import decode, encode, eos_id

    chat = read_chat(run)
    if chat is None or chat.form.get("style") != "speakers":
        return False, f"{run} has no play-script chat template", False
    ok, detail = True, []
    for messages, kwargs in [(CHAT, {}), *CHAT_EDGES]:
        want = Chat(chat).render(check_messages(messages), kwargs)
        got = srv.post("/apply-template", {"messages": messages, "chat_template_kwargs": kwargs})["prompt"]
        if got != want:
            ok = False
            detail.append(f"jinja {got!r} != ours {want!r}")
    detail.insert(0, f"jinja == ({1 + len(CHAT_EDGES)} chats)" if ok else "jinja differs:")
    ours = Chat(chat).render(check_messages(CHAT))
    go = ollama_render(modelfile, CHAT)
    if go is None:
        detail.append("go skipped (no go: apt-get install golang-go)")
    else:
        ok &= go == ours
        detail.append("go ==" if go == ours else f"go {go!r} != ours {ours!r}")
    path = ort_greedy_paths(rt, [encode(tok, ours)], eos_id(tok), CHAT_STEPS)[0]
    text = decode(tok, path.tokens)
    cut = min((text.index(s) for s in chat.stop if s in text), default=None)
    want, finish = (text, "length") if cut is None else (text[:cut], "stop")
    got = srv.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": CHAT_STEPS, "stop": list(chat.stop),
                                            **GREEDY})["choices"][0]
    same = (got["message"]["content"], got["finish_reason"]) == (want, finish)
    detail.append(f"reply == ORT ({len(want)} chars, {finish})" if same else
                  f"reply {got['message']['content']!r} ({got['finish_reason']}) != ORT {want!r} ({finish})")
    return ok and same, ", ".join(detail), same and finish == "stop"


def check_kind(kind: str, binary: Path, work: Path, floor: float) -> list[Row]:
    from training.checkpoint import load_tokenizer
    from training.tokenizer import encode, eos_id

    run, art, ggufs = train_and_export(kind, work)
    tok = load_tokenizer(run)
    rt = ort_runtime(art)
    paths = ort_greedy_paths(rt, [encode(tok, p) for p in PROMPTS], eos_id(tok))
    rows = []
    for t, gguf in ggufs.items():
        row = Row(kind, t)
        with LlamaServer(binary, ["-m", str(gguf), *SERVER_ARGS], log=work / f"llama-{kind}-{t}.log") as srv:
            if t == "f32":
                tokenized, row.tokenize = check_tokenize(srv, tok, held_text())
                decisive = compare(srv, row, paths)
                chatted, row.chat, row.stopped = check_chat(srv, run, gguf.parent / "Modelfile", rt, tok)
                row.ok = tokenized and decisive and chatted and row.dlogprob <= F32_LOGPROB_TOL
            else:
                compare(srv, row, paths)
                row.ok = row.top1 >= floor
        rows.append(row)
    return rows


def table(rows: list[Row], floor: float) -> str:
    lines = [f"{'case':<9}  {'gguf':<5}  {'tokenize (held text == ours)':<30}  "
             f"{'greedy == ORT (tokens of 64, per prompt)':<40}  {'top-1 == ORT':>14}  "
             f"{'max |Δlogprob|':>14}  result  chat: llama.cpp's and Go's rendering == ours, reply == ORT"]
    for r in rows:
        need = "1 but ~" if r.gguf_type == "f32" else f">= {floor:g}"
        tol = f"<= {F32_LOGPROB_TOL:g}" if r.gguf_type == "f32" else ""
        lines.append(f"{r.case:<9}  {r.gguf_type:<5}  {r.tokenize:<30}  {r.greedy:<40}  "
                     f"{r.top1:>6.4f} {need:>7}  {r.dlogprob:>6.4f} {tol:>7}  {'ok' if r.ok else 'FAIL':<6}  {r.chat}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="where runs, exports and logs go (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = p.parse_args(argv)
    from export.quantize import MIN_TOP1_AGREEMENT as floor

    t0 = time.perf_counter()
    binary = llama_server_binary()
    print(f"llama-server: {binary} (ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gguf-test-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    rows: list[Row] = []
    try:
        for kind in CASES:
            t1 = time.perf_counter()
            rows += check_kind(kind, binary, work, floor)
            print(f"{kind}: trained, exported and compared in {time.perf_counter() - t1:.0f} s", flush=True)
    finally:
        if not a.work and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows, floor))
    failed = [f"{r.case} {r.gguf_type}" for r in rows if not r.ok]
    if rows and not any(r.stopped for r in rows):    # a tiny model may not end a speech; one of the two must
        failed.append(f"chat: no reply reached the stop in {CHAT_STEPS} tokens, so the stop went unchecked")
    print(f"gguf-test: {'FAILED: ' + ', '.join(failed) if failed else 'ok'} in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
