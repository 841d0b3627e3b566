"""shelley's model server: ONNX Runtime behind a grpc.aio streaming API, no torch.

    python -m serving --model artifacts/default        # gRPC :50051, metrics :9090
    python -m serving.client "ROMEO:"                   # stream a completion

Modules: config (flags/env), artifact (load + verify the model dir), engine (continuous
batching over the ONNX graph), server (gRPC servicer, health, drain), metrics, client.
"""
