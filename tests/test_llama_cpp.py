"""tests/llama_cpp.py without compiling: the cache key, the cached binary's reuse, what a
missing toolchain says, and a server that dies at start. The build itself runs in
`make gguf-test`."""
from __future__ import annotations

import stat

import llama_cpp
import pytest

from core.errors import UserError


def test_the_cache_key_follows_the_version_and_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("SHELLEY_CACHE", str(tmp_path))
    monkeypatch.setattr(llama_cpp, "cpu_flags", lambda: ["avx", "avx2", "avx512f"])
    avx512 = llama_cpp.build_dir()
    monkeypatch.setattr(llama_cpp, "cpu_flags", lambda: ["avx", "avx2"])
    avx2 = llama_cpp.build_dir()
    assert avx512 != avx2 and avx2.parent == tmp_path / "llama.cpp"
    assert avx2.name.startswith(f"{llama_cpp.VERSION}-")


def test_a_cached_binary_is_reused_without_a_toolchain(monkeypatch, tmp_path):
    monkeypatch.setenv("SHELLEY_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))           # no cmake, no compiler: nothing may build
    cached = llama_cpp.build_dir() / "llama-server"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    assert llama_cpp.llama_server_binary() == cached


def test_a_missing_toolchain_is_named_before_anything_is_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("SHELLEY_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(UserError, match=r"needs cmake .* missing: (cmake, )?a C\+\+ compiler"):
        llama_cpp.llama_server_binary()
    assert not (tmp_path / "llama.cpp" / llama_cpp.SDIST).exists()


def test_a_server_that_exits_at_start_shows_its_log(tmp_path):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: failed to load model' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = llama_cpp.LlamaServer(fake, ["-m", "missing.gguf"], log=tmp_path / "log", ready_s=10)
    with pytest.raises(RuntimeError, match="exited with 1(.|\n)*failed to load model"):
        server.start()
