"""Chat: the speaker form found in a corpus, the template it writes, transformers rendering
the identical string from the --format hf export, and /v1/chat/completions (the official
`openai` client, streaming and not, n choices, seeds), gRPC chat and tokenize, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from conftest import DATA, SONNETS

from core.chat import read_chat
from core.errors import InvalidRequest, UserError
from export.__main__ import main as export_main
from serving.chat import Chat, check_messages
from serving.grpc.proto import pb
from tests.serving_fixtures import cached_artifact, play_artifact
from tests.serving_live import LiveServer
from training.chat_form import chat_template, find_form

ROMEO = DATA / "romeo.txt"          # the first scenes of Romeo and Juliet, as the default corpus writes them
FORM = find_form([ROMEO.read_text()])
TINY_STYLE = "".join(f"{who}:\n{line}\n\n" for who, line in [
    ("First Citizen", "Before we proceed any further, hear me speak."), ("ALL", "Speak, speak."),
    ("First Citizen", "You are all resolved rather to die than to famish?"), ("ALL", "Resolved. resolved."),
    ("MENENIUS", "What work's, my countrymen, in hand?"), ("MARCIUS", "Thanks. What's the matter?"),
    ("MENENIUS", "Why, masters, my good friends."), ("MARCIUS", "He that will give good words to thee.")])
CONVERSATION = [{"role": "system", "content": "A public place."},
                {"role": "user", "content": "Good morrow, cousin.\n\n  Is the day so young?"},
                {"role": "assistant", "content": "But new struck nine.", "name": "Mercutio"},
                {"role": "user", "content": [{"type": "text", "text": "Ay me!"}, {"type": "text", "text": "Sad hours."}]}]


def test_the_form_is_found_in_the_corpus():
    form = find_form([ROMEO.read_text()])
    assert (form["style"], form["suffix"], form["upper"], form["directions"]) == ("speakers", ".", False, True)
    assert {form["user"], form["assistant"]} <= set(form["top_speakers"][:4])
    tiny = find_form([TINY_STYLE])
    assert (tiny["style"], tiny["suffix"], tiny["upper"], tiny["directions"]) == ("speakers", ":", True, False)
    assert {tiny["user"], tiny["assistant"]} == {"MENENIUS", "MARCIUS"}    # the upper-case pair that answer each other
    assert find_form([SONNETS.read_text()])["style"] == "prose"


def test_an_artifact_without_a_template_says_to_re_export():
    with pytest.raises(InvalidRequest, match="no chat template.*re-run"):
        Chat(None).render(HI)


def test_the_template_writes_the_play():
    chat = Chat(chat_template(FORM))
    user, assistant = chat.form["user"], chat.form["assistant"]
    assert chat.render(check_messages(CONVERSATION)) == (
        f"[A public place.]\n\n{user}.\nGood morrow, cousin.\nIs the day so young?\n\n"
        f"Mercutio.\nBut new struck nine.\n\n{user}.\nAy me!\nSad hours.\n\nMercutio.\n")   # named: the reply's speaker too
    first = [CONVERSATION[1]]
    assert chat.render(first).endswith(f"young?\n\n{assistant}.\n") and assistant != "Mercutio"
    assert chat.render(first, {"assistant_name": "Juliet", "user_name": "Romeo"}) == \
        "Romeo.\nGood morrow, cousin.\nIs the day so young?\n\nJuliet.\n"
    assert chat.render(first, add_generation_prompt=False).endswith("young?\n\n") and chat.stop == ("\n\n",)
    upper = Chat(chat_template(find_form([TINY_STYLE])))
    assert upper.render([{"role": "system", "content": "Rome."}, {"role": "user", "content": "Hail.", "name": "Brutus"}],
                        {"assistant_name": "cassius"}) == "Rome.\n\nBRUTUS:\nHail.\n\nCASSIUS:\n"
    prose = Chat(chat_template(find_form([SONNETS.read_text()])))
    assert prose.render(check_messages(CONVERSATION)) == \
        "A public place.\n\nGood morrow, cousin.\nIs the day so young?\n\nBut new struck nine.\n\nAy me!\nSad hours.\n\n"


@pytest.fixture(scope="module")
def template_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "romeo.jinja"
    path.write_text(chat_template(FORM).template)
    return path


@pytest.fixture(scope="module")
def chat_art(tiny_run, tmp_path_factory) -> Path:
    """The tiny model (trained on sonnets: no dialogue) exported with the play's template."""
    return play_artifact(tiny_run, tmp_path_factory)


def test_training_records_the_form_and_export_carries_or_overrides_it(tiny_run, chat_art, template_file,
                                                                      tmp_path_factory, tmp_path):
    run = read_chat(tiny_run)
    assert run.form["style"] == "prose" and run.stop == ("\n\n",)
    assert read_chat(cached_artifact(tiny_run, tmp_path_factory)) == run
    art = read_chat(chat_art)
    assert art.template == template_file.read_text() and art.form["template_from"] == "romeo.jinja"   # same source
    out = tmp_path / "stops"
    assert export_main(["--run", str(tiny_run), "--out", str(out), "--chat-stop", "\n\n", "--chat-stop", "]"]) == 0
    assert read_chat(out).stop == ("\n\n", "]")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    with pytest.raises(UserError, match="not valid Jinja2"):
        export_main(["--run", str(tiny_run), "--out", str(tmp_path / "bad"), "--chat-template", str(bad)])


def test_transformers_renders_the_identical_string(tiny_run, template_file, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    assert export_main(["--format", "hf", "--run", str(tiny_run), "--out", str(hf),
                        "--chat-template", str(template_file)]) == 0
    assert json.loads((hf / "tokenizer_config.json").read_text())["chat_template"] == template_file.read_text()
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    ours = Chat(chat_template(FORM))
    prose = chat_template({"style": "prose"})
    cases = [(CONVERSATION, {}, True), (CONVERSATION[1:2], {"assistant_name": "Juliet"}, True),
             (CONVERSATION, {"user_name": "Tybalt"}, False)]
    for messages, kwargs, add in cases:
        want = ours.render(check_messages(messages), kwargs, add)
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add, **kwargs) == want
        assert tok.apply_chat_template(messages, chat_template=prose.template, tokenize=False,
                                       add_generation_prompt=add, **kwargs) == \
            Chat(prose).render(check_messages(messages), kwargs, add)


# ---- the server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(chat_art):
    s = LiveServer(chat_art, max_new_tokens=200, max_batch=8)
    yield s
    s.close()


HI = [{"role": "user", "content": "Good morrow."}]
PLAY_HI = f"{FORM['user']}.\nGood morrow.\n\n{FORM['assistant']}.\n"      # what HI renders to


def test_the_openai_client_chats_streaming_and_not(live):
    import openai

    client = openai.OpenAI(base_url=f"{live.base}/v1", api_key="unused", max_retries=0)
    c = client.chat.completions.create(model="m", messages=HI, max_tokens=12, seed=4, logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True})
    choice = c.choices[0]
    assert c.object == "chat.completion" and c.id.startswith("chatcmpl-") and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and c.usage.prompt_tokens == len(PLAY_HI)
    content = choice.logprobs.content
    spelled = bytes(b for t in content for b in t.bytes).decode(errors="replace")
    assert spelled.startswith(choice.message.content) and len(content) == c.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.token for t in content)
    stream = client.chat.completions.create(model="m", messages=HI, max_tokens=12, seed=4, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant" and parts[0].object == "chat.completion.chunk"
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == choice.message.content
    assert parts[-1].usage.completion_tokens == c.usage.completion_tokens and parts[-2].choices[0].finish_reason


def test_n_choices_differ_and_seeds_reproduce(live):
    import openai

    client = openai.OpenAI(base_url=f"{live.base}/v1", api_key="unused", max_retries=0)
    make = lambda: client.chat.completions.create(model="m", messages=HI, max_tokens=10, n=3, seed=11,  # noqa: E731
                                                  temperature=1.2, extra_body={"ignore_eos": True})
    a, b = make(), make()
    texts = [ch.message.content for ch in sorted(a.choices, key=lambda ch: ch.index)]
    assert len(set(texts)) == 3 and texts == [ch.message.content for ch in sorted(b.choices, key=lambda ch: ch.index)]
    assert a.usage.completion_tokens == 30
    second = client.chat.completions.create(model="m", messages=HI, max_tokens=10, seed=12, temperature=1.2,
                                            extra_body={"ignore_eos": True})
    assert second.choices[0].message.content == texts[1]                  # choice i is seed + i


def test_a_reply_ends_where_a_speech_ends(live, http):
    newline = live.server.artifact.tokenizer.token_to_id("\n")
    r = http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 20, "logit_bias": {str(newline): 100}})
    body = r.json()
    assert body["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": "stop"}               # the blank line ended the speech
    assert body["usage"]["completion_tokens"] == 2


def test_grpc_chat_is_the_same_chat_and_model_info_shows_the_template(live, http):
    r = http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 15, "seed": 9,
                                                "chat_template_kwargs": {"assistant_name": "Juliet"}}).json()
    request = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="Good morrow.")], max_tokens=15,
                                 seed=9, chat_template_kwargs={"assistant_name": "Juliet"})
    assert live.stub.Complete(request).text == r["choices"][0]["message"]["content"]
    info = live.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.chat_template == live.server.chat.source and list(info.chat_stop) == ["\n\n"]
    assert list(info.chat_speakers) == []      # an operator's template: the corpus (sonnets) has no speakers
    model = http.get("/v1/models").json()["data"][0]
    assert model["chat_template"] == info.chat_template and model["chat_stop"] == ["\n\n"]
    with pytest.raises(grpc.RpcError) as e:
        live.stub.Complete(pb.GenerateRequest(messages=[pb.ChatMessage(role="narrator", content="x")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "messages[0].role" in e.value.details()


def test_tokenize_and_detokenize_on_both_apis(live, http):
    r = http.post("/tokenize", json={"messages": HI, "chat_template_kwargs": {"assistant_name": "Juliet"}}).json()
    user = FORM["user"]
    assert r["prompt"] == f"{user}.\nGood morrow.\n\nJuliet.\n" and r["count"] == len(r["tokens"]) == len(r["prompt"])
    assert "".join(r["token_strs"]) == r["prompt"] and r["max_model_len"] == 32
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": r["prompt"]}
    plain = http.post("/tokenize", json={"prompt": "é!"}).json()
    assert plain["token_strs"][:2] == ["bytes:\\xc3", "bytes:\\xa9"] and plain["count"] == 3
    g = live.stub.Tokenize(pb.TokenizeRequest(messages=[pb.ChatMessage(role="user", content="Good morrow.")],
                                              add_generation_prompt=False))
    assert g.prompt == f"{user}.\nGood morrow.\n\n" and list(g.tokens) == r["tokens"][: g.count]
    assert live.stub.Detokenize(pb.DetokenizeRequest(tokens=g.tokens)).prompt == g.prompt
    bad = http.post("/detokenize", json={"tokens": [1, 10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


LONG = [{"role": "user", "content": "word " * 10}]


def test_truncate_prompt_tokens_keeps_the_end_of_a_long_conversation(live, http):
    for keep, want in ((-1, 32), (10, 10)):
        r = http.post("/v1/chat/completions", json={"messages": LONG, "max_tokens": 3, "truncate_prompt_tokens": keep})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == want, r.text
    r = http.post("/v1/completions", json={"prompt": "Shall I compare thee", "max_tokens": 1, "echo": True,
                                           "truncate_prompt_tokens": 7, "logprobs": 0})
    lp = r.json()["choices"][0]["logprobs"]
    assert r.json()["choices"][0]["text"].startswith("re thee") and lp["tokens"][:7] == list("re thee")
    g = live.stub.Complete(pb.GenerateRequest(prompt="word " * 10, max_tokens=2, truncate_prompt_tokens=-1))
    assert g.usage.prompt_tokens == 32
    bad = http.post("/v1/chat/completions", json={"messages": HI, "truncate_prompt_tokens": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "truncate_prompt_tokens"

BAD_CHAT = [
    ({"messages": []}, "messages must be a non-empty list", "messages"),
    ({"messages": "hi"}, "messages must be a non-empty list", "messages"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "messages[0].role must be one of system, user, assistant",
     "messages[0].role"),
    ({"messages": [HI[0], {"role": "user", "content": "  "}]}, "messages[1].content is empty", "messages[1].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0] must be", "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string", "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "name": "a\nb"}]}, "messages[0].name must be 1 to 64",
     "messages[0].name"),
    ({"messages": HI, "chat_template_kwargs": {"assistant_name": 3}}, "chat_template_kwargs.assistant_name must be",
     "chat_template_kwargs"),
    ({"messages": HI, "top_logprobs": 2}, "top_logprobs needs logprobs: true", "top_logprobs"),
    ({"messages": HI, "logprobs": True, "top_logprobs": 6}, "logprobs must be between 0 and 5", "logprobs"),
    ({"messages": HI, "stop": ["a"] * 8}, "stop has 8 strings; chat adds the template's 1, so the limit is 7", "stop"),
    ({"messages": HI, "n": 3, "max_tokens": 100}, "n x max_tokens is 3 x 100 = 300 tokens; the limit for one "
     "request is 200", "n"),
    ({"messages": HI, "max_completion_tokens": 0}, "max_tokens must be between 1 and 200", "max_tokens"),
    ({"messages": LONG}, "the messages render to 68 tokens; the limit is the context length, 32", "messages"),
]


@pytest.mark.parametrize("body,message,param", BAD_CHAT, ids=[p for _, _, p in BAD_CHAT])
def test_each_bad_chat_is_a_400_naming_the_field(http, body, message, param):
    for stream in (False, True):
        r = http.post("/v1/chat/completions", json={**body, "stream": stream})
        err = r.json()["error"]
        assert r.status_code == 400 and err["message"].startswith(message) and err["param"] == param, err
