"""Build both images and run the whole pipeline inside them: `make image-test`.

    make image-test                      (root, with Debian's buildah and debootstrap)
    python tests/images.py [--mirror URL] [--torch-wheels DIR]

hadolint reads Dockerfile.train and Dockerfile.serve; this builds and runs them, without a
Docker engine or an image registry, so it works on a bare Debian CI machine:
  base    a stand-in for python:3.11-slim-bookworm: Debian's own python3 (3.11) from
          `debootstrap --variant=minbase`, imported as localhost/shelley-base (cached by recipe)
  images  `buildah bud --isolation chroot` (no daemon, no runtime) of both Dockerfiles, their
          CPU variants: SERVE_EXTRA=serve, and PIP_FIND_LINKS naming a local CPU torch wheel
  train   the train image's own CMD (make train && make export) trains a tiny model on the
          baked-in corpus and exports it into a mounted directory, as UID 10001
  serve   the serve image's CMD serves that model; from outside: a completion streamed over
          gRPC, /metrics read; inside: its HEALTHCHECK answers, `import core` works, no
          torch; the server runs as UID 10001 and exits 0 on SIGTERM
  rebuild a code-only change to serving/ rebuilds only the serve image's last layers
Every phase is timed; a failure names its phase and shows the end of its log, and all logs
stay in reports/image-test/. Not part of `make test`: it needs root and takes minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: core/ is the project's
from core.net import free_port  # noqa: E402
WORK = ROOT / "reports" / "image-test"  # git- and docker-ignored
UID = 10001
SERVE_TAG, TRAIN_TAG = "localhost/shelley-serve:image-test", "localhost/shelley-train:image-test"
CONTAINERS = {"train": "shelley-image-test-train", "serve": "shelley-image-test-serve"}
BUILDAH = ["buildah", "--log-level", "error"]
ISOLATION = ["--isolation", "chroot"]  # buildah's one isolation that needs no OCI runtime

# The base: python3 + venv + a `python` command, as python:3.11-slim-bookworm has. Its pip
# trusts the system CA store, which the builds mount over with the machine's bundle when
# pip's own config names one (a TLS-inspecting proxy); nothing machine-specific is baked in.
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
BASE_PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
BASE_CONTAINERFILE = 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n'

# The pipeline: a tiny model (seconds) on the image's baked-in corpus, into /pipeline, a mount
# beside the images' /artifacts volume (a bind mount on a VOLUME path is shadowed here).
TRAIN_ENV = {"RUN": "/pipeline/runs/tiny", "ART": "/pipeline/models/tiny", "PRESET": "cpu-small",
             "TRAIN_ARGS": "--tokenizer char --n-layer 2 --n-head 2 --n-embd 32 --block-size 32 "
                           "--batch-size 8 --max-iters 60 --eval-interval 20 --eval-iters 2 --device cpu"}
PROMPT, MAX_TOKENS = "ROMEO:", 24


class Failure(Exception):
    """A phase failed; the message says what, with the end of its log."""


# ---------- running commands ----------

def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run(cmd: list[str], log: Path, timeout: float = 600) -> None:
    """Run cmd with its output appended to log; raise Failure if it fails."""
    print("  $ " + shlex.join(cmd), flush=True)
    with log.open("a") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise Failure(f"`{shlex.join(cmd[:3])} ...` took over {timeout:.0f} s\n{tail(log)}") from None
    if rc != 0:
        raise Failure(f"`{shlex.join(cmd[:3])} ...` exited {rc}; the end of {log.relative_to(ROOT)}:\n{tail(log)}")


def output(cmd: list[str], timeout: float = 120) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise Failure(f"`{shlex.join(cmd)}` exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def image_exists(tag: str) -> bool:
    return subprocess.run([*BUILDAH, "inspect", "--type", "image", tag], capture_output=True).returncode == 0


def image_config(tag: str) -> dict:
    return json.loads(output([*BUILDAH, "inspect", "--type", "image", tag]))["Docker"]


def image_size(tag: str) -> str:
    return json.loads(output([*BUILDAH, "images", "--json", tag]))[0]["size"]


def remove_containers() -> None:
    for name in CONTAINERS.values():
        subprocess.run([*BUILDAH, "rm", name], capture_output=True)


def container_run(name: str, command: list[str], env: dict[str, str], mounts: list[str]) -> list[str]:
    """The `buildah run` command line: the image's USER and WORKDIR, our env and mounts."""
    flags = [f for m in mounts for f in ("-v", m)] + [f for k, v in env.items() for f in ("-e", f"{k}={v}")]
    return [*BUILDAH, "run", *ISOLATION, *flags, name, "--", *command]


# ---------- preflight: what this machine must provide ----------

def pip_config() -> dict[str, list[str]]:
    """pip's cert and find-links as `pip config list` shows them (files and PIP_* variables)."""
    found: dict[str, list[str]] = {"cert": [], "find-links": []}
    listing = output([sys.executable, "-m", "pip", "config", "list"])
    for key, value in re.findall(r"^\S*\.(cert|find-links)='(.*)'$", listing, re.M):
        found[key] += value.split()
    return found


def preflight(args: argparse.Namespace) -> tuple[Path | None, Path]:
    """(the CA bundle to mount into builds or None, the directory holding the CPU torch wheel)."""
    missing = [tool for tool in ("buildah", "debootstrap", "tar") if shutil.which(tool) is None]
    needs = [f"{' and '.join(missing)} (Debian, as root: apt-get install --no-install-recommends "
             f"{' '.join(missing)})"] if missing else []
    if os.geteuid() != 0:
        needs.append("root, for debootstrap and buildah's chroot isolation (sudo make image-test)")
    if needs:
        raise Failure("make image-test needs " + "; and ".join(needs))
    config = pip_config()
    cert = Path(config["cert"][0]) if config["cert"] else None
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pin = next(r.split("==")[1].split()[0] for r in extras["train"] if r.startswith("torch=="))
    dirs = [Path(args.torch_wheels)] if args.torch_wheels else [Path(d) for d in config["find-links"]]
    wheels = [w for d in dirs if d.is_dir() for w in sorted(d.glob(f"torch-{pin}+cpu-*.whl"))]
    if not wheels:
        raise Failure(f"no CPU wheel of torch=={pin} in {[str(d) for d in dirs] or 'pip find-links (none set)'}; "
                      f"fetch one (pip download --no-deps torch=={pin} --index-url "
                      "https://download.pytorch.org/whl/cpu -d DIR) and pass --torch-wheels DIR")
    print(f"  CA bundle for builds: {cert or '(none: pip uses its own)'}; torch wheel: {wheels[0]}")
    return cert, wheels[0].parent


# ---------- phases ----------

def base_image(mirror: str, log: Path) -> str:
    """localhost/shelley-base:<suite>-<hash of the recipe>, built once per machine."""
    recipe = "\n".join([SUITE, PACKAGES, mirror, BASE_PIP_CONF, BASE_CONTAINERFILE, inspect.getsource(base_image)])
    tag = f"localhost/shelley-base:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if image_exists(tag):
        print(f"  {tag}: built earlier on this machine (buildah rmi it to rebuild)")
        return tag
    ctx = WORK / "base"
    rootfs = ctx / "rootfs"
    run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs), mirror], log, timeout=900)
    # debootstrap copied this host's resolv.conf and hostname: empty them (every RUN and
    # container gets its own, mounted over them), and keep apt's caches out of the image
    for mounted in ["etc/resolv.conf", "etc/hostname", "etc/hosts"]:
        (rootfs / mounted).write_text("")
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"]:
        for f in (rootfs / cache).glob("*"):
            if f.is_file():
                f.unlink()
    (rootfs / "etc" / "pip.conf").write_text(BASE_PIP_CONF)
    run(["tar", "-C", str(rootfs), "-cf", str(ctx / "rootfs.tar"), "."], log)
    shutil.rmtree(rootfs)
    (ctx / "Containerfile").write_text(BASE_CONTAINERFILE)
    run([*BUILDAH, "bud", *ISOLATION, "--format", "docker", "-t", tag, str(ctx)], log)
    shutil.rmtree(ctx)
    return tag


def build(dockerfile: str, tag: str, base: str, args: dict[str, str], mounts: list[str], log: Path,
          context: Path = ROOT) -> None:
    # docker format: OCI images have no HEALTHCHECK. --layers: buildah caches steps only if asked.
    build_args = [f for k, v in {"PYTHON_IMAGE": base, **args}.items() for f in ("--build-arg", f"{k}={v}")]
    run([*BUILDAH, "bud", *ISOLATION, "--layers", "--pull=never", "--format", "docker", "-f",
         str(context / dockerfile), *build_args, *[f for m in mounts for f in ("-v", m)], "-t", tag,
         str(context)], log, timeout=1200)


def train_in_image(pipeline: Path, log: Path) -> Path:
    shutil.rmtree(pipeline, ignore_errors=True)
    pipeline.mkdir(parents=True)
    os.chown(pipeline, UID, UID)  # the image writes as UID 10001, as on the cluster's volume
    output([*BUILDAH, "from", "--pull=never", "--name", CONTAINERS["train"], TRAIN_TAG])
    cmd = image_config(TRAIN_TAG)["config"]["Cmd"]
    run(container_run(CONTAINERS["train"], cmd, TRAIN_ENV, [f"{pipeline}:/pipeline"]), log, timeout=900)
    art = pipeline / "models" / "tiny"
    files = sorted(p.name for p in art.iterdir()) if art.is_dir() else []
    if not {"manifest.json", "model.onnx", "model.fp16.onnx", "tokenizer.json"} <= set(files):
        raise Failure(f"the train image's `{' '.join(cmd)}` left {files} in {art}")
    summary = json.loads((pipeline / "runs" / "tiny" / "summary.json").read_text())
    print(f"  trained {summary['iters']} iterations in {summary['wall_s']:.1f} s (val loss "
          f"{summary['best_val_loss']:.2f}); {art.relative_to(ROOT)}: {', '.join(files)}")
    return art


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def serve_in_image(pipeline: Path, log: Path) -> None:
    name = CONTAINERS["serve"]
    config = image_config(SERVE_TAG)["config"]
    output([*BUILDAH, "from", "--pull=never", "--name", name, SERVE_TAG])
    # chroot isolation shares the host's network: free loopback ports, not the images' defaults
    # (SHELLEY_HTTP_PORT too, for the HTTP API once the server has one)
    env = {"SHELLEY_MODEL": "/pipeline/models/tiny", "SHELLEY_HOST": "127.0.0.1",
           **{f"SHELLEY_{p}PORT": str(free_port()) for p in ["", "METRICS_", "HTTP_"]}}
    mounts = [f"{pipeline}:/pipeline:ro"]
    cmd = container_run(name, config["Cmd"], env, mounts)
    print("  $ " + shlex.join(cmd) + " &", flush=True)
    with log.open("a") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        serve_checks(server, name, config, env, mounts, log)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def serve_checks(server: subprocess.Popen, name: str, config: dict, env: dict[str, str], mounts: list[str],
                 log: Path) -> None:
    test = config["Healthcheck"]["Test"]  # ["CMD", ...] or ["CMD-SHELL", "..."]
    health = container_run(name, test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]], env, mounts)
    print(f"  waiting for the image's HEALTHCHECK ({' '.join(test[1:])}) to pass", flush=True)
    deadline = time.monotonic() + 120
    while subprocess.run(health, capture_output=True, timeout=60).returncode != 0:
        if server.poll() is not None:
            raise Failure(f"the server exited {server.returncode} before it was healthy:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise Failure(f"HEALTHCHECK still failing after 120 s:\n{tail(log)}")
        time.sleep(1)

    client = [sys.executable, "-m", "serving.client", PROMPT, "--target", f"127.0.0.1:{env['SHELLEY_PORT']}",
              "--max-tokens", str(MAX_TOKENS), "--seed", "0"]
    print("  $ " + shlex.join(client), flush=True)
    done = subprocess.run(client, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not done.stdout.startswith(PROMPT) or len(done.stdout.strip()) <= len(PROMPT):
        raise Failure(f"streaming from the host failed (exit {done.returncode}): {done.stdout!r} {done.stderr}")
    print(f"  streamed: {done.stdout.strip()!r}")

    url = f"http://127.0.0.1:{env['SHELLEY_METRICS_PORT']}/metrics"
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in
               urllib.request.urlopen(url, timeout=10).read().decode().splitlines() if line.startswith("shelley_")}
    generate_ok = sum(v for k, v in samples.items() if k.startswith("shelley_requests_total{")
                      and 'rpc="Generate"' in k and 'code="OK"' in k)
    tokens = samples.get("shelley_generated_tokens_total", 0)
    if generate_ok != 1 or not tokens:
        raise Failure(f"{url}: {generate_ok} Generate OK and {tokens} generated tokens; expected 1 and some")
    print(f"  {url}: 1 Generate OK, {tokens:.0f} generated tokens")

    probe = ("import core, core.artifact, core.tokens, core.window, core.logprobs, importlib.util as u; "
             "print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)")
    found = output(container_run(name, ["python", "-c", probe], {}, [])).split()
    if found != ["None", "True"]:
        raise Failure(f"the serving image should import core and onnxruntime, and have no torch; got {found}")
    print("  `import core` works in the serving image; no torch; onnxruntime present")

    pids = [p for p in descendants(server.pid) if cmdline(p)[-2:] == ["-m", "serving"]
            and not cmdline(p)[0].startswith("buildah")]
    if len(pids) != 1:
        raise Failure(f"expected one server process under buildah run, found {pids}")
    ids = {line.split(":")[0]: line.split()[1:] for line in Path(f"/proc/{pids[0]}/status").read_text().splitlines()
           if line.startswith(("Uid:", "Gid:"))}  # real, effective, saved, filesystem
    if set(ids["Uid"] + ids["Gid"]) != {str(UID)}:
        raise Failure(f"the server runs as {ids}, not UID/GID {UID}")
    print(f"  the server (pid {pids[0]}) runs as UID and GID {UID}")

    os.kill(pids[0], signal.SIGTERM)  # what Kubernetes sends the container's process
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise Failure(f"the server did not stop within 60 s of SIGTERM:\n{tail(log)}") from None
    if server.returncode != 0:
        raise Failure(f"the server exited {server.returncode} on SIGTERM:\n{tail(log)}")
    print("  SIGTERM: drained and exited 0")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1] or [""]
    except OSError:
        return [""]


def code_only_rebuild(base: str, mounts: list[str], log: Path) -> str:
    """Rebuild the serve image from a copy of its context with one comment added to serving/,
    and say how many layers changed: only those from `COPY serving/` on may."""
    ctx = WORK / "rebuild-context"
    shutil.rmtree(ctx, ignore_errors=True)
    sources = {".dockerignore", "Dockerfile.serve"}
    for line in (ROOT / "Dockerfile.serve").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources.update(shlex.split(line)[1:-1])
    for source in sorted(sources):
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, ctx / source, ignore=shutil.ignore_patterns("__pycache__", "_gen"))
        else:
            ctx.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, ctx / source)
    with (ctx / "serving" / "__init__.py").open("a") as f:
        f.write("# image-test: a code-only change\n")
    rebuilt = SERVE_TAG + "-rebuild"
    began = time.monotonic()
    build("Dockerfile.serve", rebuilt, base, {"SERVE_EXTRA": "serve"}, mounts, log, context=ctx)
    seconds = time.monotonic() - began
    before, after = (image_config(t)["rootfs"]["diff_ids"] for t in (SERVE_TAG, rebuilt))
    shared = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), len(after))
    output([*BUILDAH, "rmi", rebuilt])
    shutil.rmtree(ctx)
    if len(after) - shared not in (1, 2):
        raise Failure(f"a code-only change rebuilt {len(after) - shared} of {len(after)} layers; "
                      "expected only `COPY serving/` and the compileall after it")
    return f"{len(after) - shared} of {len(after)} layers rebuilt, the build took {seconds:.1f} s"


# ---------- the run ----------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/images.py", description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for the base")
    parser.add_argument("--torch-wheels", help="directory with the CPU torch wheel (default: pip's find-links)")
    args = parser.parse_args(argv)
    times: list[tuple[str, float, str]] = []
    start = time.monotonic()
    phase = "preflight"

    @contextlib.contextmanager
    def timed(name: str):
        nonlocal phase
        phase = name
        print(f"\n==> {name}", flush=True)
        began = time.monotonic()
        note: list[str] = []
        yield note
        times.append((name, time.monotonic() - began, " ".join(note)))
        print(f"<== {name}: {times[-1][1]:.1f} s", flush=True)

    try:
        with timed("preflight"):
            cert, wheels = preflight(args)
            shutil.rmtree(WORK, ignore_errors=True)
            WORK.mkdir(parents=True)
            remove_containers()  # left by a run that was killed
        mounts = [f"{cert}:/etc/ssl/certs/ca-certificates.crt:ro"] if cert else []
        with timed("base image") as note:
            base = base_image(args.mirror, WORK / "base.log")
            note.append(f"{base} {image_size(base)}")
        with timed("serve image") as note:
            build("Dockerfile.serve", SERVE_TAG, base, {"SERVE_EXTRA": "serve"}, mounts, WORK / "serve-image.log")
            note.append(f"{SERVE_TAG} {image_size(SERVE_TAG)}")
        with timed("train image") as note:
            # /mnt: a directory the base already has, so the mount leaves no trace in the image
            build("Dockerfile.train", TRAIN_TAG, base, {"PIP_FIND_LINKS": "/mnt"}, [*mounts, f"{wheels}:/mnt:ro"],
                  WORK / "train-image.log")
            note.append(f"{TRAIN_TAG} {image_size(TRAIN_TAG)}")
        with timed("train + export in the train image"):
            train_in_image(WORK / "pipeline", WORK / "train.log")
        with timed("serve in the serve image"):
            serve_in_image(WORK / "pipeline", WORK / "serve.log")
        with timed("code-only serve rebuild") as note:
            note.append(code_only_rebuild(base, mounts, WORK / "rebuild.log"))
    except Exception as err:
        print(f"\nimage-test FAILED in phase '{phase}': {err}", file=sys.stderr)
        if not isinstance(err, Failure):
            raise
        return 1
    finally:
        remove_containers()
    print(f"\nimage-test passed in {time.monotonic() - start:.0f} s (logs: {WORK.relative_to(ROOT)}/)")
    for name, seconds, note in times:
        print(f"  {name:<36} {seconds:7.1f} s  {note}")
    store = json.loads(output([*BUILDAH, "info"]))["store"]["GraphRoot"]
    size = output(["du", "-sh", store]).split()[0]
    print(f"buildah's store {store}: {size}, kept for the next run (`buildah rmi --all` empties it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
