"""Export: a training run -> a model artifact dir that ONNX Runtime serves.

    python -m export --run runs/default --out artifacts/default [--dtype fp16] [--quantize int8] [--force]
    python -m export.verify artifacts/default --run runs/default     # parity with PyTorch

onnx_graph.py builds the in-place KV-cache graph and checks each graph it writes,
embed_graph.py the embeddings graph (the final norm's hidden states), build.py
writes the artifact dir (with artifact.py filling core/artifact.py's contract), quantize.py
makes and checks the int8 file, verify.py compares the serving runtime with PyTorch,
hf.py writes transformers' format, gguf.py (with gguf_vocab.py, the tokenizer) llama.cpp's
and Ollama's, both in the layout layout.py finds for the run (GPT-2's or Qwen3's), and
chat.py applies `--chat-template` / `--chat-stop` to the run's template for every format.
Imports: core, training and the serving runtime.
"""
