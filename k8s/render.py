"""Render a kustomize overlay to YAML in Python, for machines without kubectl.

    python k8s/render.py k8s/overlays/cpu > shelley-cpu.yaml

It implements only the subset of kustomize that k8s/ uses, and refuses anything else:
`resources` (files and directories), `namespace`, `labels` (includeSelectors: false),
`images` (newName/newTag) and `patches` given by `path` (strategic merge: maps merge, lists
of named items merge by name, other lists are replaced). `make k8s-render` prefers
`kubectl kustomize`; tests/test_deploy.py checks both agree when kubectl is present.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}
# kustomize's "legacy" print order puts these kinds first, in this order (so that what others
# need exists first); the rest follow ordered by apiVersion, kind and name.
KIND_ORDER = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
              "ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
              "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass",
              "PersistentVolume", "PersistentVolumeClaim", "Deployment", "StatefulSet",
              "CronJob", "PodDisruptionBudget"]


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def merge(base: Any, patch: Any) -> Any:
    """Strategic-merge `patch` into `base` (the subset described above); returns a new value."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out = list(base)
        for item in patch:
            index = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = merge(out[index], item)
        return out
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _pod_specs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    template = resource.get("spec", {}).get("template", {})
    return [template["spec"]] if "spec" in template else []


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources of the kustomization in `directory`, with its transformations applied."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomize fields not supported here: {sorted(unknown)}")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += render(path) if path.is_dir() else load_yaml_docs(path)

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise ValueError(f"{directory}: only `patches: - path: FILE` is supported")
        for patch in load_yaml_docs(directory / patch_entry["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            matches = [i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) == key]
            if not matches:
                raise ValueError(f"{directory}: patch target {key} not found")
            for i in matches:
                resources[i] = merge(resources[i], patch)

    namespace = kustomization.get("namespace")
    for resource in resources:
        if namespace and resource["kind"] not in CLUSTER_SCOPED:
            resource["metadata"]["namespace"] = namespace

    for group in kustomization.get("labels", []):
        if group.get("includeSelectors"):
            raise ValueError(f"{directory}: labels with includeSelectors are not supported")
        for resource in resources:
            targets = [resource["metadata"]]
            if group.get("includeTemplates"):
                targets += [resource["spec"]["template"].setdefault("metadata", {})
                            for _ in _pod_specs(resource)]
            for meta in targets:
                meta.setdefault("labels", {}).update(group["pairs"])

    for image in kustomization.get("images", []):
        for resource in resources:
            for spec in _pod_specs(resource):
                for container in spec.get("initContainers", []) + spec.get("containers", []):
                    name, _, tag = container["image"].partition(":")
                    if name == image["name"]:
                        new_tag = image.get("newTag", tag)
                        container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
    return resources


def sort_for_apply(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def rank(r: dict[str, Any]) -> tuple[int, str, str, str]:
        kind = r["kind"]
        first = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        return (first, r["apiVersion"], kind, r["metadata"]["name"])
    return sorted(resources, key=rank)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / "kustomization.yaml").is_file():
        print("usage: python k8s/render.py DIR_WITH_KUSTOMIZATION_YAML", file=sys.stderr)
        return 2
    try:
        resources = sort_for_apply(render(Path(args[0])))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(resources, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
