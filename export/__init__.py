"""Export: a training run -> a model artifact dir that ONNX Runtime serves.

    python -m export --run runs/default --out artifacts/default [--dtype fp16] [--force]
    python -m export.verify artifacts/default --run runs/default     # parity with PyTorch

onnx_graph.py builds the KV-cache graph, artifact.py writes model_config.json and
manifest.json, verify.py compares ONNX Runtime with PyTorch, and ort_runner.py shows the
fastest way we found to run the graph from Python (session options, IO binding).
"""
