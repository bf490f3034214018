"""deploy/ is valid for the tools that read it: Serve, Ray's cluster launcher, KubeRay, docker.

CPU only and offline: each file is checked with the schema or parser of the tool that reads it
(ServeDeploySchema, the app's own argument parsing, Ray's autoscaler schema, the `raylight`
CLI parser) and against the others (one Ray version, one image tag, enough GPUs, mounted model).
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import importlib
import io
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from pydantic import BaseModel
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

from raylight.cluster.app_config import AppConfig, app_config_from_args
from raylight.cluster.cli import build_parser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli comes with mypy, a test dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, f"{path} is not a YAML mapping"
    return data


def _kuberay() -> dict[str, Any]:
    return _yaml(DEPLOY / "kuberay" / "rayservice.yaml")


def _serve_configs() -> dict[str, dict[str, Any]]:
    return {
        "deploy/serve.yaml": _yaml(DEPLOY / "serve.yaml"),
        "serveConfigV2": yaml.safe_load(_kuberay()["spec"]["serveConfigV2"]),
    }


def _app_config(serve_config: dict[str, Any]) -> AppConfig:
    (app,) = serve_config["applications"]
    return app_config_from_args(app["args"])


def _docker_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = [line.strip().partition(" ") for line in joined.splitlines() if line.strip()]
    return [(op.upper(), rest.strip()) for op, _, rest in pairs]


def _docker_args(op: str) -> list[str]:
    return [rest for name, rest in _docker_instructions() if name == op]


def _ray_version() -> str:
    (arg,) = [a for a in _docker_args("ARG") if a.startswith("RAY_VERSION=")]
    return arg.partition("=")[2]


def _image_tag() -> str:
    """The tag the Dockerfile's header tells people to build."""
    match = re.search(r"docker build -f deploy/Dockerfile -t (\S+) \.", DOCKERFILE)
    assert match, "the Dockerfile documents no `docker build -f deploy/Dockerfile -t TAG .`"
    return match.group(1)


def _parse_cli(argv: list[str]) -> Any:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`raylight {' '.join(argv)}` is refused: {err.getvalue()}")


def _refuse_unknown_keys(raw: dict[str, Any], schema: type[BaseModel], where: str) -> None:
    # Serve's schemas ignore unknown keys silently; a typo there would be a setting lost.
    unknown = set(raw) - set(schema.model_fields)
    assert not unknown, f"{where}: keys {sorted(unknown)} are not in {schema.__name__}"


def _under(path: str, mounts: list[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(m) for m in mounts)


def test_every_deploy_yaml_parses() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.yaml")}
    assert {"serve.yaml", "ray-cluster.yaml", "kuberay/rayservice.yaml"} <= names
    for path in DEPLOY.rglob("*.yaml"):
        _yaml(path)
    assert isinstance(yaml.safe_load(_kuberay()["spec"]["serveConfigV2"]), dict)


@pytest.mark.parametrize("name", ["deploy/serve.yaml", "serveConfigV2"])
def test_serve_config_validates_and_its_args_build_the_app_config(name: str) -> None:
    from raylight.engine.llm import engine_options

    raw = _serve_configs()[name]
    _refuse_unknown_keys(raw, ServeDeploySchema, name)
    _refuse_unknown_keys(raw["http_options"], HTTPOptionsSchema, f"{name} http_options")
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "0.0.0.0", "a cluster's proxies listen beyond loopback"
    for app_raw, app in zip(raw["applications"], schema.applications):
        _refuse_unknown_keys(app_raw, ServeApplicationSchema, f"{name} app {app.name}")
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        config = app_config_from_args(app.args)  # unknown or mistyped args raise here
        engine_options(config.engine)
        assert config.served_model_name, "clients need a stable model name"


def test_deploy_configs_serve_the_same_app_as_the_preset_from_shared_storage() -> None:
    preset = _yaml(ROOT / "configs" / "serve.yaml")
    (preset_app,) = preset["applications"]
    for name, raw in _serve_configs().items():
        (app,) = raw["applications"]
        assert app["import_path"] == preset_app["import_path"], name
        model = _app_config(raw).model
        assert model and PurePosixPath(model).is_absolute(), f"{name}: model {model!r}"
    # serveConfigV2 is deploy/serve.yaml embedded: one place to change settings.
    configs = _serve_configs()
    assert configs["serveConfigV2"] == configs["deploy/serve.yaml"]


def test_cluster_launcher_config_validates_against_ray_schema() -> None:
    raw = _yaml(DEPLOY / "ray-cluster.yaml")
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(raw, json.loads(schema_path.read_text()))
    validate_config(prepare_config(copy.deepcopy(raw)))  # what `ray up` does before launching

    app = _app_config(_yaml(DEPLOY / "serve.yaml"))
    nodes = raw["available_node_types"].values()
    gpus = sum(n.get("max_workers", 0) * n["resources"].get("GPU", 0) for n in nodes)
    assert gpus >= app.num_engine_replicas * app.tensor_parallel_size
    assert raw["docker"]["image"].startswith(f"rayproject/ray:{_ray_version()}-")
    volumes = [o.split("=", 1)[1] for o in raw["docker"]["run_options"] if "--volume=" in o]
    assert _under(app.model, [v.split(":")[1] for v in volumes]), "model not in a volume"
    assert any(
        "pip install" in cmd and remote in cmd
        for cmd in raw["setup_commands"]
        for remote in raw["file_mounts"]
    ), "setup_commands must install the synced checkout"


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec["template"]["spec"]["containers"]


def _gpus(container: dict[str, Any]) -> int:
    return int(container["resources"]["limits"].get("nvidia.com/gpu", 0))


def _mounts(spec: dict[str, Any]) -> list[str]:
    return [m["mountPath"] for c in _containers(spec) for m in c.get("volumeMounts", [])]


def test_kuberay_manifest_has_head_gpu_workers_serve_port_and_the_image() -> None:
    doc = _kuberay()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _ray_version()
    head, workers = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    serve = _serve_configs()["serveConfigV2"]
    ports = {p.get("name"): p["containerPort"] for p in _containers(head)[0]["ports"]}
    assert ports.get("serve") == serve["http_options"]["port"]

    gpu_groups = [(g, _gpus(c)) for g in workers for c in _containers(g) if _gpus(c) > 0]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    app = _app_config(serve)
    assert sum(g["replicas"] * n for g, n in gpu_groups) >= (
        app.num_engine_replicas * app.tensor_parallel_size
    )
    for group in [head] + [g for g, _ in gpu_groups]:
        assert "/dev/shm" in _mounts(group)
        assert _under(app.model, _mounts(group)), "the model directory is not mounted"
    for group in [head, *workers]:
        for container in _containers(group):
            assert container["image"].rsplit("/", 1)[-1] == _image_tag()


def _strict(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as JSON Schema, as kubeconform reads it: objects with
    `properties` refuse other keys (unless they preserve unknown fields), fields with a default
    are not required (the API server fills them in), int-or-string and nullable spelled out."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items()}
    props = node.get("properties")
    if props is not None:
        if "required" in node:
            node["required"] = [r for r in node["required"] if "default" not in props.get(r, {})]
        keep_unknown = node.get("x-kubernetes-preserve-unknown-fields")
        if "additionalProperties" not in node and not keep_unknown:
            node["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    return node


def test_kuberay_manifest_validates_against_the_rayservice_crd() -> None:
    crd = json.loads(gzip.decompress((ROOT / "tests/data/kuberay_rayservice_v1.schema.json.gz")
                                     .read_bytes()))  # fmt: skip
    validator = jsonschema.Draft7Validator(_strict(crd))
    errors = ["/".join(map(str, e.absolute_path)) + ": " + e.message
              for e in validator.iter_errors(_kuberay())]  # fmt: skip
    assert not errors, errors
    broken = copy.deepcopy(_kuberay())
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}  # a typo
    assert not validator.is_valid(broken), "the strict schema must refuse unknown fields"


def test_dockerfile_copies_what_pip_install_needs_and_runs_a_real_command() -> None:
    project = PYPROJECT["project"]
    assert _image_tag() == f"raylight:{project['version']}"
    (base,) = _docker_args("FROM")
    assert re.fullmatch(r"rayproject/ray:\$\{RAY_VERSION\}-py31[0-2]-(gpu|cu12\d)", base), base
    ray_req = next(Requirement(r) for r in project["dependencies"] if r.startswith("ray"))
    assert Version(_ray_version()) in ray_req.specifier

    sources = {s for a in _docker_args("COPY") for s in a.split()[:-1] if not s.startswith("--")}
    dirs = {p.split(".")[1] for p in PYPROJECT["tool"]["setuptools"]["packages"] if "." in p}
    assert dirs | {"pyproject.toml", "__init__.py", project["readme"]} <= sources
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the root .dockerignore must leave out everything (.venv, .git) first"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the checkout"
        assert f"!{source}" in ignore, f"COPY {source}: left out of the context by .dockerignore"

    (cmd,) = _docker_args("CMD")
    argv = json.loads(cmd)  # exec form: signals reach raylight, not a shell
    assert argv[0] == "raylight"
    args = _parse_cli(argv[1:])
    assert (args.command, args.host) == ("serve", "0.0.0.0")
    assert str(args.port) in " ".join(_docker_args("EXPOSE")).split()
    for documented in re.findall(r"raylight serve (--[^\n\\]*)", DOCKERFILE):
        _parse_cli(["serve", *documented.split()])
