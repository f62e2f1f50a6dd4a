"""No Docker engine runs here: read the Dockerfile and docker-compose.yml and check what they promise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from service.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _cli_commands() -> set[str]:
    import typer.main

    group = typer.main.get_command(cli_app)
    return set(group.commands)


def test_compose_services_commands_ports_and_volumes():
    compose = _compose()
    services = compose["services"]
    assert {"api", "dispatcher", "postgres", "migrate", "minio", "bucket", "ray-head", "ray-cpu-worker",
            "ray-gpu-worker"} <= set(services)
    api, dispatcher, postgres, migrate = (services[name] for name in ("api", "dispatcher", "postgres", "migrate"))
    assert api["command"][:2] == ["ticketguard", "serve"] and "8000:8000" in api["ports"]
    assert int(api["command"][api["command"].index("--workers") + 1]) > 1
    assert dispatcher["command"][:2] == ["sh", "-c"]
    joins, dispatches = dispatcher["command"][2].split(" && ")
    assert joins == "ray start --address=ray-head:6379 --num-cpus=0 --num-gpus=0"  # a driver needs a local node
    assert dispatches == "exec ticketguard supervise"
    assert migrate["command"] == ["ticketguard", "migrate"]
    assert api["environment"]["TICKETGUARD_EXECUTOR"] == "external"
    assert dispatcher["environment"]["TICKETGUARD_EXECUTOR"] == "ray"
    assert dispatcher["environment"]["TICKETGUARD_RAY_ADDRESS"] == "ray-head:6379"
    for name, service in services.items():
        if not service.get("image", "").startswith("ticketguard:"):
            continue
        environment = service["environment"]
        url = environment["TICKETGUARD_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url, name
        assert environment["TICKETGUARD_ARTIFACT_URL"].startswith("s3://"), name
        assert environment["TICKETGUARD_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment), name
        assert "cache:/data" in service["volumes"], name
        assert environment["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in environment, name
    for name in ("api", "migrate"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "dispatcher", "ray-cpu-worker", "ray-gpu-worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["depends_on"]["bucket"]["condition"] == "service_completed_successfully", name
    for name in ("dispatcher", "ray-cpu-worker", "ray-gpu-worker"):
        assert services[name]["depends_on"]["ray-head"] == {"condition": "service_healthy", "restart": True}, name
    assert any(v.startswith("pgdata:") for v in postgres["volumes"])
    assert any(v.startswith("objects:") for v in services["minio"]["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert "health-check" in services["ray-head"]["healthcheck"]["test"]
    assert set(compose["volumes"]) == {"pgdata", "objects", "cache"}


def test_compose_ray_cluster_shape():
    services = _compose()["services"]
    head = services["ray-head"]["command"]
    assert head[:3] == ["ray", "start", "--head"] and "--port=6379" in head and "--block" in head
    assert "--num-cpus=0" in head and "--num-gpus=0" in head  # the head schedules, runs no job
    for name in ("ray-cpu-worker", "ray-gpu-worker"):
        command = services[name]["command"]
        assert command[:2] == ["ray", "start"] and "--address=ray-head:6379" in command and "--block" in command
    assert "--num-gpus=0" in services["ray-cpu-worker"]["command"]
    gpu = services["ray-gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    # Ray refuses nodes of another Python version: every service runs one image
    assert {service["image"] for service in services.values() if "build" in service} == {"ticketguard:latest"}
    assert services["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]  # no authentication: this host only
    for name in ("ray-head", "ray-cpu-worker", "ray-gpu-worker"):
        assert services[name]["shm_size"], name
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for name, service in services.items():  # every image that runs Ray or talks to S3 has the extras
        if service.get("image", "").startswith("ticketguard:"):
            assert set(service["build"]["args"]["EXTRAS"].split(",")) == {"ray", "s3"}, name


def test_compose_settings_are_real_settings():
    from service.config import Settings

    fields = {f"TICKETGUARD_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("TICKETGUARD_"):
                assert variable in fields, (name, variable)
    assert Settings(executor="ray", ray_address="ray-head:6379").executor == "ray"


def test_compose_variables_have_a_default_or_an_error():
    text = (ROOT / "docker-compose.yml").read_text()
    for expression in re.findall(r"\$\{([^}]*)\}", text):
        assert ":-" in expression or ":?" in expression, expression


def test_compose_commands_exist_in_cli():
    services = _compose()["services"]
    commands = set(re.findall(r"(?<!\S)ticketguard (\w+)", " ".join(" ".join(service.get("command", []))
                                                                 for service in services.values())))
    assert {"serve", "supervise", "migrate"} <= commands <= _cli_commands()


def test_dockerfile_base_user_port_healthcheck_and_command():
    instructions = _dockerfile()
    kinds = [kind for kind, _ in instructions]
    args = {value.split("=", 1)[0]: value.split("=", 1)[1] for kind, value in instructions if kind == "ARG"
            and "=" in value}
    assert args["BASE_IMAGE"].startswith("python:3.1") and "slim" in args["BASE_IMAGE"]
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    assert dict(instructions)["FROM"] == "${BASE_IMAGE}"
    users = [value for kind, value in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert ("EXPOSE", "8000") in instructions and "HEALTHCHECK" in kinds
    command = [value for kind, value in instructions if kind == "CMD"][-1]
    assert json.loads(command)[:2] == ["ticketguard", "serve"]
    torch_install = next(value for kind, value in instructions if kind == "RUN" and "torch==" in value)
    assert "${TORCH_INDEX}" in torch_install and "torch==${TORCH_VERSION}" in torch_install
    ci_torch = re.search(r"torch==([0-9][\w.+]*)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert args["TORCH_VERSION"] == ci_torch
    copies = " ".join(value for kind, value in instructions if kind == "COPY")
    assert ".ticketguard" not in copies
    assert ".ticketguard" in (ROOT / ".dockerignore").read_text()
    package_install = next(value for kind, value in instructions
                           if kind == "RUN" and "pip install \".${EXTRAS" in value)
    assert "${EXTRAS:+[$EXTRAS]}" in package_install  # the optional extras (ray, s3) the compose file asks for
    assert args.get("EXTRAS", "") == '""'  # the default image carries neither Ray nor boto3
