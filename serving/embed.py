"""Embeddings: the artifact's embed.onnx (the final norm's hidden states), mean-pooled over each
input's tokens and scaled to length 1.

    embedder = Embedder(artifact)                 # nothing loaded yet
    vectors = embedder.embed([[5, 9, 2], [7]])    # (2, n_embd) float32, each of norm 1

Pooling: the mean of the final norm's states over the input's tokens, then L2-normalised.
The model was trained only to predict the next token, so its last position's state mostly
says what comes next (it is what the head reads); the mean summarises every token of the
input. Normalised as OpenAI's embeddings are, so a dot product is the cosine similarity.

Why apart from the engine: an embedding is one forward pass with no cache and no sampling,
so it never takes a batch slot or waits for a decode step. Its session is loaded at the
first request (a server nobody asks for embeddings pays nothing) and runs single-threaded
on the CPU, in the caller's thread (the HTTP front calls it with asyncio.to_thread), so it
takes at most one core from decoding. Rows are sorted by length and run in batches of at
most BATCH_TOKENS padded tokens; right padding cannot change a real token's state (causal
attention), so every row's vector is what it alone would get.
"""
from __future__ import annotations

import threading

import numpy as np

from core.artifact import EMBED_FILE, EMBED_INPUT, Artifact
from core.errors import InvalidRequest

BATCH_TOKENS = 4096    # padded tokens per run: bounds the (B, T, C) activations and the padding waste


class Embedder:
    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self._session = None
        self._lock = threading.Lock()

    def session(self):
        if self.artifact.embed_path is None:
            raise InvalidRequest(f"this model's artifact has no {EMBED_FILE}: it was exported before "
                                 "embeddings; re-run `python -m export --run RUN --out ART --force`", param="model")
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                from serving.engine.runtime import session_options
                self._session = ort.InferenceSession(str(self.artifact.embed_path), session_options(1),
                                                     providers=["CPUExecutionProvider"])
        return self._session

    def embed(self, rows: list[list[int]]) -> np.ndarray:
        """(len(rows), n_embd) float32: each row's mean final-norm state, of length 1."""
        session = self.session()
        out = np.empty((len(rows), self.artifact.config.model.n_embd), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(rows[order[end]]) <= BATCH_TOKENS:
                end += 1
            batch = order[start:end]
            lengths = np.array([len(rows[i]) for i in batch])
            ids = np.zeros((len(batch), lengths.max()), dtype=np.int64)
            for r, i in enumerate(batch):
                ids[r, :lengths[r]] = rows[i]
            states = session.run(None, {EMBED_INPUT: ids})[0]                        # (B, T, C)
            real = (np.arange(ids.shape[1])[None] < lengths[:, None])[..., None]     # (B, T, 1)
            pooled = (states * real).sum(1) / lengths[:, None]                       # (B, C)
            out[batch] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            start = end
        return out
