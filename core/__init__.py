"""shelley.core: what every stage shares, and nothing any stage owns.

    from core.artifact import load_artifact        # the model artifact dir: files, ONNX names
    from core.model_config import ModelConfig      # the model's shape (training writes it)
    from core.errors import UserError, run_main    # one-line command-line errors, exit 2
    from core.files import atomic_write            # a kill never leaves a torn file
    from core.window import window_keep            # how generation slides past the context
    from core.tokens import TokenTable             # token id -> bytes / text, built once
    from core.logprobs import log_softmax          # one log-softmax for export and serving
    from core.run_dir import CKPT, read_summary     # a training run dir's file names and summary
    from core.net import free_port                 # a free loopback port (demo, benches, tests)

Torch-free, no gRPC, no ONNX Runtime (numpy and `tokenizers` at most), so the serving image
imports it as readily as the training image. Every stage imports core; core imports no stage.
"""
