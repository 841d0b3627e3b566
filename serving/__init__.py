"""shelley's model server: ONNX Runtime behind gRPC and an OpenAI-compatible HTTP API, no torch.

    python -m serving --model artifacts/default        # gRPC :50051, HTTP :8000, metrics :9090
    python -m serving.client "ROMEO:"                   # stream a completion

Modules: config (flags/env), server (lifecycle: load, health, drain; the one `phase`),
engine/ (core: the loop on its own thread, schedule -> run -> sample -> output; scheduler:
who joins, who leaves, what runs, as a typed plan; runner: a plan on the slots; sampler: a
step's draws and logprobs, over sampling and penalties; output: text, check_stop, events;
slots: the slot table and prefix cache; speculate; requests and check_stop; limits; runtime:
the ONNX Runtime session and in-place KV cache, which export uses too), grpc/ (api: the gRPC
front door and its status table; proto: the generated stubs), http/ (app: the HTTP front
door and its status table; gate: keys and body limits; completions, chat_completions,
responses and embeddings: OpenAI's shapes; logprobs: OpenAI's logprobs object; playground/),
chat (the chat template's renderer), embed (embed.onnx's session and pooling), tokenize,
auth (API keys, TLS), logs (request ids, access lines, JSON), metrics, client, demo,
healthcheck. What the stages share (the artifact contract, errors, the token table, the run
dir's names) is in core/.
"""
