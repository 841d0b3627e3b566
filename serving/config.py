"""ServeConfig: the server's settings from flags, each with a SHELLEY_* environment variable.

    cfg = parse_args(["--model", "artifacts/default"])   # env: SHELLEY_MODEL=... etc.

A flag beats its env var, which beats the default. Bad values -> UserError (one line).
The API key is never printed (not in --help, not in the config's repr).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from core.artifact import MODEL_FILES
from core.errors import UserError
from serving.engine.spread import SPINS, SPREADS
from serving.logs import LOG_FORMATS

DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ServeConfig:
    model: str = ""
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9090           # 0 = an ephemeral port (tests); -1 = no metrics server
    http_port: int = 8000              # OpenAI-compatible HTTP API + playground; 0 = ephemeral, -1 = off
    device: str = "auto"
    precision: str = "fp32"            # which model file: fp32 (on CUDA: the fp16 file if exported), fp16, int8
    max_batch: int = 32
    max_queue: int = 256
    max_new_tokens: int = 1024         # the largest max_tokens a request may ask for
    speculate: int = 4                 # a lone request verifies up to this many drafted tokens a step; 0 = off
    message_rate: float = 1000.0       # streamed messages per second, all streams together; 0 = one per step
    prefix_cache: bool = True          # a prompt that starts as a free slot's cache did is fed only the rest
    drain_seconds: float = 20.0        # SIGTERM grace for running streams
    threads: int = 0                   # cores the runtime uses (a batch is cut into this many single-threaded
                                       # slices); 0 = every core the process may use (affinity, cgroup quota)
    ort_spin: str = "call"             # how ONNX Runtime's pool threads wait: spin within a graph call and
                                       # sleep after it (call), spin between calls too (always), never (off)
    spread: str = "auto"               # how a step of n rows uses the cores: auto (timed at start-up per row
                                       # count), threads (split each matmul), slices (cut the rows)
    log_level: str = "info"
    log_format: str = "text"           # "json": every log line one JSON object
    api_key: str = field(default="", repr=False)   # required as `Bearer KEY` by TextGeneration and /v1/*
    api_key_file: str = ""             # one key a line (a mounted Kubernetes Secret); adds to --api-key
    tls_cert: str = ""                 # PEM; with tls_key, both ports speak TLS
    tls_key: str = ""
    tls_client_ca: str = ""            # PEM CA: clients must present a certificate it signed (mTLS)

    def __post_init__(self) -> None:
        if not self.model:
            raise UserError("no model: pass --model ARTIFACT_DIR (or set SHELLEY_MODEL)")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in MODEL_FILES:
            raise UserError(f"--precision must be one of {', '.join(MODEL_FILES)}, got {self.precision!r}")
        object.__setattr__(self, "ort_spin", {"true": "always", "false": "off"}.get(self.ort_spin, self.ort_spin))   # the old boolean
        if self.ort_spin not in SPINS:
            raise UserError(f"--ort-spin must be one of {', '.join(SPINS)}, got {self.ort_spin!r}")
        if self.spread not in SPREADS:
            raise UserError(f"--spread must be one of {', '.join(SPREADS)}, got {self.spread!r}")
        if self.log_level not in LOG_LEVELS:
            raise UserError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise UserError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        for name, low in (("max_batch", 1), ("max_queue", 1), ("max_new_tokens", 1), ("speculate", 0), ("message_rate", 0), ("threads", 0),
                          ("port", 0), ("metrics_port", -1), ("http_port", -1), ("drain_seconds", 0)):
            if getattr(self, name) < low:
                raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UserError("--tls-cert and --tls-key go together: pass both, or neither for plaintext")
        if self.tls_client_ca and not self.tls_cert:
            raise UserError("--tls-client-ca needs --tls-cert and --tls-key: client certificates only work over TLS")
        for name in ("api_key_file", "tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise UserError(f"--{name.replace('_', '-')} {path}: no such file; check the path (or the mounted Secret)")


def boolean(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


boolean.__name__ = "boolean (true/false)"


def env_name(field: str) -> str:
    return "SHELLEY_" + field.upper()


def parse_args(argv: list[str] | None = None, environ: dict | None = None) -> ServeConfig:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="python -m serving", description="shelley gRPC model server")
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if callable(f.type) else {"int": int, "float": float, "str": str, "bool": boolean}[f.type]
        raw = env.get(env_name(f.name))
        try:
            default = f.default if raw is None else kind(raw)
        except ValueError:
            raise UserError(f"{env_name(f.name)}={raw!r} is not a valid {kind.__name__}") from None
        p.add_argument(flag, type=kind, default=default, help=f"(env {env_name(f.name)}; default {f.default!r})")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # argparse already printed a one-line usage error
        if e.code == 0:
            raise
        raise UserError("bad command line (see the usage line above)") from None
    return ServeConfig(**vars(args))
