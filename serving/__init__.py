"""shelley's model server: ONNX Runtime behind gRPC and an OpenAI-compatible HTTP API, no torch.

    python -m serving --model artifacts/default        # gRPC :50051, HTTP :8000, metrics :9090
    python -m serving.client "ROMEO:"                   # stream a completion

Modules: config (flags/env), server (lifecycle: load, health, drain; the one `phase`),
engine (continuous batching on its own thread), slots (the batch's slot table), sampling
(batched sampling, stop strings), runtime (the ONNX Runtime session and the in-place KV
cache; export uses it too), grpc_api (the gRPC front door and its status table), http (the
HTTP front door, its status table and the playground/ page), openai_api (OpenAI's request
and response shapes), logprobs (OpenAI's logprobs object), auth (API keys, TLS), logs
(request ids, access lines, JSON), metrics, proto (the generated stubs), client, demo,
healthcheck. What the stages share (the artifact contract, errors, the token table) is in core/.
"""
