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
    assert {"api", "worker", "postgres", "migrate"} <= set(services)
    api, worker, postgres, migrate = (services[name] for name in ("api", "worker", "postgres", "migrate"))
    assert api["command"][:2] == ["ticketguard", "serve"] and "8000:8000" in api["ports"]
    assert worker["command"] == ["ticketguard", "supervise"]
    assert migrate["command"] == ["ticketguard", "migrate"]
    assert api["environment"]["TICKETGUARD_EXECUTOR"] == "external"
    assert worker["environment"]["TICKETGUARD_EXECUTOR"] == "local"
    for service in (api, worker, migrate):
        assert "artifacts:/data" in service["volumes"]
        url = service["environment"]["TICKETGUARD_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in (api, worker):
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert any(v.startswith("pgdata:") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert set(compose["volumes"]) == {"pgdata", "artifacts"}


def test_services_without_an_http_server_disable_the_image_healthcheck():
    services = _compose()["services"]
    for name in ("worker", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_compose_variables_have_a_default_or_an_error():
    text = (ROOT / "docker-compose.yml").read_text()
    for expression in re.findall(r"\$\{([^}]*)\}", text):
        assert ":-" in expression or ":?" in expression, expression


def test_compose_commands_exist_in_cli():
    services = _compose()["services"]
    commands = {service["command"][1] for service in services.values() if "command" in service}
    assert commands <= _cli_commands()


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
