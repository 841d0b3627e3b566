"""shelley's model server: ONNX Runtime behind a grpc.aio streaming API, no torch.

    python -m serving --model artifacts/default        # gRPC :50051, metrics :9090
    python -m serving.client "ROMEO:"                   # stream a completion

Modules: config (flags/env), artifact (load + verify the model dir), engine (continuous
batching over the ONNX graph), server (gRPC servicer, health, drain), http (the
OpenAI-compatible HTTP front door and the playground/ page), openai_api (its request and
response shapes), logprobs (token texts), auth (API keys, TLS), logs (request ids, access
lines, JSON), metrics, client.
"""
