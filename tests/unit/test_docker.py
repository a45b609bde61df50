"""The Dockerfile and the deployment's compose file use only commands and options the command
line has (Docker does not run here, so this is what keeps them in step)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from fhir_images.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def check_args(args: list[str]) -> None:
    """Walk the arguments through the click tree: every sub-command must exist, every option
    must be one of its command's, and a group must end in a command."""
    command: click.Command = main
    for arg in args:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            known |= {"--help", "-h"}
            assert name in known, f"{' '.join(args)}: {command.name} has no option {name}"
        elif isinstance(command, click.Group) and arg in command.commands:
            command = command.commands[arg]
    assert not isinstance(command, click.Group) or args[-1] in ("--help", "-h"), (
        f"{' '.join(args)} names a group, not a command"
    )


def dockerfile_entry() -> tuple[list[str], list[str]]:
    text = DOCKERFILE.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    return entry, cmd


def compose_commands() -> dict[str, list[str]]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: s["command"] for name, s in services.items() if "command" in s}


def test_the_image_runs_the_command_line_as_a_user() -> None:
    entry, cmd = dockerfile_entry()
    assert entry == ["fhir-images"]
    check_args(cmd)
    text = DOCKERFILE.read_text()
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER \d+", final, re.M), "the final stage must not run as root"
    assert "python:3.11-slim" in final and "COPY --from=build" in final
    assert "apt-get" not in final and "pip install" not in final


@pytest.mark.parametrize("service", sorted(compose_commands()))
def test_every_compose_command_exists(service: str) -> None:
    args = compose_commands()[service]
    assert all(isinstance(a, str) for a in args), "quote numbers in commands"
    check_args(args)


def test_the_server_is_reached_only_through_the_gateway() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services, networks = doc["services"], doc["networks"]
    assert "ports" not in services["hapi"]
    assert all(networks[n].get("internal") for n in services["hapi"]["networks"])
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["gateway"]
    assert {"hook", "hook-install"} <= set(services)
    assert compose_commands()["hook-install"][:2] == ["hook", "install"]


def test_a_wrong_option_would_be_caught() -> None:
    with pytest.raises(AssertionError):
        check_args(["gateway", "serve", "--upstreem", "http://x"])
    with pytest.raises(AssertionError):
        check_args(["gateway"])
