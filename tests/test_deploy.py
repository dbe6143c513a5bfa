"""deploy/ (Kubernetes) and the Dockerfile, checked as far as this machine can: no cluster
and no container engine run here, so the manifests are validated offline against the
Kubernetes schemas, and what they ask of modelgate (arguments, variables, probe paths and
ports) is put to the real command line, settings and servers."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.procs import ServerProcess
from modelgate.gateway.cli import build_parser
from modelgate.gateway.settings import SETTINGS, ServerSettings, build_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The oldest Kubernetes release still commonly run, and the newest the validator knows.
KUBERNETES = ("1.29.0", kubernetes_validate.latest_version())
VARIABLES = {s.variable for s in SETTINGS.values()}


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {p.name: _documents(p.name) for p in sorted(DEPLOY.glob("*.yaml"))}


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [
        d
        for docs in _manifests().values()
        for d in docs
        if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    assert len(found) == 1, (kind, name, found)
    return found[0]


def _container(kind: str, name: str) -> dict[str, Any]:
    (container,) = _one(kind, name)["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _dockerfile_env() -> dict[str, str]:
    """The variables the image's ENV instructions set."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
    return env


def _gateway_environment() -> dict[str, str]:
    """What the gateway container sees: the image's ENV, the ConfigMap, literal env values
    (secrets are left out: they are not in the manifests)."""
    container = _container("Deployment", "modelgate")
    env = dict(_dockerfile_env())
    for source in container.get("envFrom", []):
        env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _gateway_settings() -> ServerSettings:
    """The gateway's settings as `modelgate` builds them from the container's arguments and
    environment; a wrong flag fails argparse (SystemExit), a wrong value SettingsError."""
    args = build_parser().parse_args(_container("Deployment", "modelgate")["args"])
    assert args.command == "serve"
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    return build_settings(flags, environ=_gateway_environment())


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for name, documents in _manifests().items():
        if name == "kustomization.yaml":
            continue
        for doc in documents:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: no schema offline (test_the_service_monitor_... below)
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
    assert checked >= 9


def test_the_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    (kustomization,) = _documents("kustomization.yaml")
    expected = {p.name for p in DEPLOY.glob("*.yaml")} - {
        "kustomization.yaml",
        "secrets.example.yaml",
    }
    assert set(kustomization["resources"]) == expected
    assert len(kustomization["resources"]) == len(expected)


def test_the_service_monitor_scrapes_the_metrics_port() -> None:
    monitor = _one("ServiceMonitor", "modelgate")
    service = _one("Service", "modelgate")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    container = _container("Deployment", "modelgate")
    assert _port(container, port["targetPort"]) == _gateway_settings().metrics_port
    assert endpoint["path"] == "/metrics"


def test_the_gateway_arguments_and_variables_are_ones_the_cli_accepts() -> None:
    env = _gateway_environment()
    container = _container("Deployment", "modelgate")
    named = set(env) | {e["name"] for e in container.get("env", [])}
    assert {n for n in named if n.startswith("MODELGATE_")} <= VARIABLES
    settings = _gateway_settings()
    # The gateways follow the registry server's Service.
    service = _one("Service", "modelgate-registry")
    assert (
        settings.registry
        == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )
    # The webhook secret comes from a Secret, never a command line or the ConfigMap.
    (secret,) = [e for e in container["env"] if e["name"] == "MODELGATE_WEBHOOK_SECRET"]
    assert secret["valueFrom"]["secretKeyRef"]["name"] == "modelgate-webhook"
    # One worker per CPU of the pod's limit: `auto` reads the limit from the cgroup, so the
    # pod must have one (and request what it is limited to).
    assert settings.workers == "auto"
    limit = container["resources"]["limits"]["cpu"]
    assert limit == container["resources"]["requests"]["cpu"]
    # Kubernetes kills the pod after the grace period: the drain must fit in it.
    grace = _one("Deployment", "modelgate")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > settings.drain_delay + settings.drain_seconds
    assert settings.webhook_outbox is not None
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(settings.webhook_outbox.is_relative_to(m) for m in mounts)


def test_probes_and_ports_are_ones_the_gateway_serves(
    module_http: httpx.Client, module_channel: grpc.Channel
) -> None:
    settings = _gateway_settings()
    container = _container("Deployment", "modelgate")
    assert _port(container, "http") == settings.http_port
    assert _port(container, "grpc") == settings.grpc_port
    assert _port(container, "metrics") == settings.metrics_port
    annotations = _one("Deployment", "modelgate")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    # Both probes on the gRPC port: under overload the HTTP port sheds connections.
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert _port(container, readiness["grpc"]["port"]) == settings.grpc_port
    assert _port(container, liveness["tcpSocket"]["port"]) == settings.grpc_port
    # The readiness probe asks the standard health service (service ""), which a loaded and
    # ready gateway answers SERVING.
    assert readiness["grpc"].get("service", "") == ""
    health = health_pb2_grpc.HealthStub(module_channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert module_http.get("/v2/health/live").status_code == 200


def test_the_custom_metric_variant_names_real_metrics() -> None:
    source = (ROOT / "gateway" / "metrics.py").read_text()
    names = set(re.findall(r"modelgate_\w+", (DEPLOY / "gateway-hpa.yaml").read_text()))
    assert "modelgate_queue_depth_rows" in names
    for name in names:
        assert f'"{name.removesuffix("_total")}"' in source, name


def _registry_command(tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    """The StatefulSet's command with this machine's paths and a free port, after checking
    that its store, token file and port are the ones its volumes, Secret and Service give."""
    statefulset = _one("StatefulSet", "modelgate-registry")
    container = _container("StatefulSet", "modelgate-registry")
    args: list[str] = list(container["args"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    store = args[args.index("--store") + 1]
    assert store == mounts[claim["metadata"]["name"]]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    (item,) = volumes["tokens"]["secret"]["items"]
    token_file = args[args.index("--token-file") + 1]
    assert token_file == f"{mounts['tokens']}/{item['path']}"
    port = int(args[args.index("--port") + 1])
    assert _port(container, "http") == port
    (service_port,) = _one("Service", "modelgate-registry")["spec"]["ports"]
    assert service_port["port"] == port
    assert _one("Secret", volumes["tokens"]["secret"]["secretName"])["stringData"][item["key"]]
    (tmp_path / "tokens").write_text("ci:s3cret\n")
    local = {store: str(tmp_path / "models"), token_file: str(tmp_path / "tokens"),
             str(port): "0", "0.0.0.0": "127.0.0.1"}  # fmt: skip
    return [sys.executable, "-m", "modelgate", *(local.get(a, a) for a in args)], container


def _gateway_command(registry: str, outbox: Path) -> tuple[list[str], dict[str, str]]:
    """The Deployment's command and environment, on 127.0.0.1 with free ports, following
    `registry`."""
    args = [
        registry if a.startswith("http://") else a
        for a in _container("Deployment", "modelgate")["args"]
    ]
    env = {**_gateway_environment(), "MODELGATE_HOST": "127.0.0.1", "MODELGATE_HTTP_PORT": "0",
           "MODELGATE_GRPC_PORT": "0", "MODELGATE_METRICS_PORT": "0",
           "MODELGATE_WEBHOOK_OUTBOX": str(outbox), "MODELGATE_DRAIN_DELAY": "0"}  # fmt: skip
    return [sys.executable, "-m", "modelgate", *args], env


def test_the_topology_runs_here_and_a_stage_change_reaches_every_replica(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    """The registry server with the StatefulSet's arguments, two gateways with the
    Deployment's arguments and variables (paths and ports made local): the probes answer,
    and one `modelgate registry transition` reaches both replicas."""
    argv, registry_container = _registry_command(tmp_path)
    processes = [ServerProcess(argv, tmp_path / "registry.log")]
    try:
        url = processes[0].wait_for_line(r"modelgate registry listening on (\S+)", 60).group(1)
        for probe in ("readinessProbe", "livenessProbe"):
            get = registry_container[probe]["httpGet"]
            answer = httpx.get(url.rstrip("/") + get["path"], timeout=30)  # no token
            assert answer.status_code == 200, (probe, answer.text)
        model = tmp_path / "model.onnx"
        model.write_bytes(model_files["classifier"])
        (tmp_path / "ci.token").write_text("s3cret\n")
        cli = [sys.executable, "-m", "modelgate", "registry", "--registry", url,
               "--token-file", str(tmp_path / "ci.token")]  # fmt: skip
        for command in (["register", "m", str(model), "--stage", "production"],
                        ["register", "m", str(model)]):  # fmt: skip
            subprocess.run([*cli, *command], check=True, capture_output=True, timeout=120)

        gateways = []
        for replica in range(2):
            argv, env = _gateway_command(url, tmp_path / f"outbox-{replica}.db")
            processes.append(ServerProcess(argv, tmp_path / f"gateway-{replica}.log", env=env))
            found = processes[-1].wait_for_line(r"modelgate listening http=(\S+) grpc=(\S+)", 60)
            gateways.append(f"http://{found.group(1)}")
            _wait_serving(found.group(2))  # what the readiness probe asks

        subprocess.run([*cli, "transition", "m", "2", "production"], check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}]
        }
        for gateway in gateways:
            deadline = time.monotonic() + 60  # a bound, not a measurement
            version = None
            while version != "2" and time.monotonic() < deadline:
                answer = httpx.post(f"{gateway}/v2/models/m/infer", json=body, timeout=30)
                assert answer.status_code == 200, answer.text
                version = answer.json()["model_version"]
            assert version == "2", gateway
    finally:
        for process in reversed(processes):
            process.stop()


def _wait_serving(address: str) -> None:
    """Until the gRPC health service at `address` answers SERVING (a bound, 60 s)."""
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{address} never SERVING"
            time.sleep(0.2)


def test_the_dockerfile_installs_what_the_readme_installs() -> None:
    """The image installs the project as the README's first command does (no extras), from
    every file that install needs, on a Python the project accepts; its health check asks
    the readiness endpoint on the port its variables set."""
    docker = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    (install,) = re.findall(r"pip install -e (\S+) && modelgate demo", readme)
    assert install == "."  # the project, no extras
    assert re.search(r"^RUN pip wheel [^\n]*--wheel-dir /wheels \.$", docker, re.M)
    assert re.search(r"^RUN pip install [^\n]*/wheels/\*\.whl", docker, re.M)
    copied = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", docker, re.M):
        copied.update(line.split()[:-1])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "modelgate"}
    needed |= {p.name for p in (ROOT / "modelgate").iterdir() if p.is_symlink()}
    assert needed <= copied, needed - copied
    (python,) = re.findall(r"^FROM python:(\d+\.\d+)\S* AS build", docker, re.M)
    floor = pyproject["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("."))) >= tuple(map(int, floor.split(".")))
    env = _dockerfile_env()
    assert set(env) - {"PYTHONUNBUFFERED", "GRPC_VERBOSITY"} <= VARIABLES
    check = re.search(r"^HEALTHCHECK .*?CMD (.+)$", docker.replace("\\\n", " "), re.M)
    assert check is not None
    assert "/v2/health/ready" in check.group(1)
    assert "os.environ['MODELGATE_HTTP_PORT']" in check.group(1)
    image = build_settings({}, environ=env)
    assert image.http_port == int(env["MODELGATE_HTTP_PORT"])
    assert image.workers == "auto"  # the container's cores
    (command,) = re.findall(r"^CMD (\[.+\])$", docker, re.M)
    assert yaml.safe_load(command)[0] == "serve"
    build_parser().parse_args(yaml.safe_load(command))
