"""llama.cpp's llama-server, built from a pinned source and cached, started and stopped on loopback.

    binary = llama_server_binary()        # builds once per (version, CPU); later calls reuse it
    with LlamaServer(binary, ["-m", "model.gguf", "-np", "1"]) as srv:    # a free loopback port
        srv.post("/tokenize", {"content": "ROMEO:"})     # -> {"tokens": [...]}
    srv = LlamaServer(binary, args).start(); ...; srv.stop()

Why: `make gguf-test` (tests/gguf_check.py) proves our GGUF export in the real llama.cpp, and
bench/load.py runs llama-server as a peer. The source is the `llama-cpp-python==0.3.36` sdist
from the package index (it vendors llama.cpp), sha256-checked; only the `llama-server` target
is built, Release, static, with llama.cpp's default native CPU flags. So the cache key is the
version and the CPU's instruction-set flags: a build for AVX-512 is never reused on a machine
with AVX2 alone. Cold, the build takes ~3 minutes on 2 cores; it needs cmake and a C++17
compiler, and says so when they are missing. Not part of `make test`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.errors import UserError  # noqa: E402
from core.files import atomic_write, cache_dir, fetch_sdist  # noqa: E402
from core.net import free_port  # noqa: E402

VERSION = "0.3.36"
REQUIREMENT = f"llama-cpp-python=={VERSION}"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDORED = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
CMAKE_OPTIONS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF",
                 # the web UI's assets: neither an npm build nor a download, an empty page table
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]
NEEDS = "cmake (apt-get install cmake, or pip install cmake) and a C++17 compiler (apt-get install g++)"


def cpu_flags() -> list[str]:
    """The CPU's instruction-set flags as the kernel lists them (sorted; empty if unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(set(line.split(":", 1)[1].split()))
    return []


def build_key() -> str:
    """The sdist version, the machine and a hash of the CPU flags a native build may use."""
    flags = hashlib.sha256(" ".join(cpu_flags()).encode()).hexdigest()[:12]
    return f"{VERSION}-{platform.machine()}-{flags}"


def build_dir() -> Path:
    return cache_dir() / "llama.cpp" / build_key()


def toolchain() -> tuple[str, str]:
    """(cmake, C++ compiler) paths; UserError naming what to install when one is missing."""
    # PATH, else beside this Python: `pip install cmake` puts it in the venv's bin
    cmake = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    cxx = os.environ.get("CXX") or next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)
    missing = [name for name, path in (("cmake", cmake), ("a C++ compiler", cxx)) if not path]
    if missing:
        raise UserError(f"building llama.cpp's llama-server needs {NEEDS}; missing: {', '.join(missing)}")
    return cmake, cxx


def run_logged(cmd: list[str], log: Path, what: str = "building llama-server", cwd: Path | None = None) -> None:
    """Run cmd with its output appended to `log`; on failure, one error naming `what`, the log
    and its last 15 lines."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        if subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise UserError(f"{what} failed ({cmd[1:3]}); the full log is {log}:\n{tail}")


def build(dest: Path, log: Path, cmake: str, cxx: str) -> float:
    """Download, extract and build llama-server into dest/llama-server; returns the seconds."""
    t0 = time.perf_counter()
    sdist = fetch_sdist(REQUIREMENT, SDIST, SDIST_SHA256, cache_dir() / "llama.cpp",
                        "building llama-server needs the package index once (then it is cached)")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "build"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(VENDORED)]
            for m in members:
                m.name = m.name[len(VENDORED):]
            tar.extractall(src, members=[m for m in members if m.name], filter="data")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        run_logged([cmake, "-S", str(src), "-B", str(out), *generator, f"-DCMAKE_CXX_COMPILER={cxx}",
                    *CMAKE_OPTIONS], log)
        run_logged([cmake, "--build", str(out), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], log)
        tmp_bin = dest / ".llama-server.tmp"
        shutil.copy2(out / "bin" / "llama-server", tmp_bin)
        os.replace(tmp_bin, dest / "llama-server")
    return time.perf_counter() - t0


def llama_server_binary(verbose: bool = True) -> Path:
    """The cached llama-server for this CPU, built first if there is none (one build at a time)."""
    dest = build_dir()
    binary = dest / "llama-server"
    if binary.is_file():
        return binary
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # a second process waits, then finds the binary
        if not binary.is_file():
            cmake, cxx = toolchain()
            if verbose:
                print(f"building llama-server {VERSION} for this CPU into {dest} (a few minutes)", flush=True)
            seconds = build(dest, dest / "build.log", cmake, cxx)
            atomic_write(dest / "build.json", json.dumps(
                {"requirement": REQUIREMENT, "sdist_sha256": SDIST_SHA256, "cmake": CMAKE_OPTIONS,
                 "cpu_flags": cpu_flags(), "build_s": round(seconds, 1)}, indent=2) + "\n")
    return binary


class LlamaServer:
    """One llama-server process on 127.0.0.1, ready (its /health answers 200) once started."""

    def __init__(self, binary: Path, args: list[str], log: Path | None = None, ready_s: float = 60):
        self.binary, self.args, self.ready_s = binary, list(args), ready_s
        self.log = log or Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LlamaServer":
        cmd = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama-server was not ready in {self.ready_s:.0f} s:\n{self.log_tail()}")

    def post(self, path: str, payload: dict, timeout: float = 120) -> dict:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
