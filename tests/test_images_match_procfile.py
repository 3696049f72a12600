"""Every image runs exactly its process's command from deploy/Procfile.

The chain under test, with no Docker and no network:
  docs/architecture.md (process table) == deploy/Procfile
  skaffold.yaml artifact (target, COMPONENT build arg) -> deploy/Dockerfile stage -> ENTRYPOINT + CMD
      == the Procfile command, a console script of the package crm-<COMPONENT>
  charts/crm/values.yaml components == the Procfile's processes, each fed the image skaffold built.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROCFILE = ROOT / "deploy" / "Procfile"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SKAFFOLD = ROOT / "skaffold.yaml"
VALUES = ROOT / "charts" / "crm" / "values.yaml"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PROCESS_ORDER = ["customer", "sales", "marketing", "servicedesk", "analytics", "gateway"]


# ----------------------------------------------------------------------------------------- parsing
def read_procfile(path: Path = PROCFILE) -> dict[str, list[str]]:
    processes: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        assert sep and command.strip(), f"not a 'name: command' line: {line!r}"
        assert name not in processes, f"process {name} listed twice"
        processes[name.strip()] = shlex.split(command)
    return processes


@dataclass
class Stage:
    name: str
    base: str
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    args: dict[str, str | None] = field(default_factory=dict)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and line continuations joined."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def exec_form(instruction: str, value: str) -> list[str]:
    # Only the exec (JSON) form runs the command itself as PID 1, so SIGTERM reaches the process.
    assert value.startswith("["), f"{instruction} {value} must use the exec form"
    argv = json.loads(value)
    assert all(isinstance(a, str) for a in argv)
    return argv


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in dockerfile_instructions(path.read_text()):
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, f"cannot parse FROM {rest}"
            base, name = match.group(1), match.group(2) or f"stage-{len(stages)}"
            current = Stage(name=name, base=base)
            if base in stages:  # a stage built on another one inherits its command
                parent = stages[base]
                current.entrypoint, current.cmd = parent.entrypoint, parent.cmd
            stages[name] = current
        elif current is None:
            continue  # ARGs before the first FROM
        elif keyword == "ARG":
            key, _, default = rest.partition("=")
            current.args[key] = default or None
        elif keyword == "ENTRYPOINT":
            current.entrypoint = exec_form(keyword, rest)
            current.cmd = None  # Docker drops an inherited CMD when ENTRYPOINT is set
        elif keyword == "CMD":
            current.cmd = exec_form(keyword, rest)
    return stages


def effective_command(stages: dict[str, Stage], target: str) -> list[str]:
    stage = stages[target]
    assert stage.entrypoint is not None or stage.cmd is not None, (
        f"stage {target} sets no command: it would inherit the base image's (python3)"
    )
    return (stage.entrypoint or []) + (stage.cmd or [])


def stage_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    chain = [stages[target]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def skaffold_artifacts() -> dict[str, dict]:
    """COMPONENT build arg -> artifact."""
    config = yaml.safe_load(SKAFFOLD.read_text())
    artifacts: dict[str, dict] = {}
    for artifact in config["build"]["artifacts"]:
        component = artifact["docker"]["buildArgs"]["COMPONENT"]
        assert component not in artifacts, f"two artifacts for {component}"
        artifacts[component] = artifact
    return artifacts


def console_scripts(package: str) -> dict[str, str]:
    workspace = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    for member in workspace:
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
        if project["name"] == package:
            return project.get("scripts", {})
    raise AssertionError(f"no workspace member is the package {package}")


PROCESSES = read_procfile()


# ------------------------------------------------------------------------------------------- tests
def test_procfile_lists_the_processes_in_the_table_order():
    assert list(PROCESSES) == PROCESS_ORDER
    for name, argv in PROCESSES.items():
        assert argv == [f"crm-{name}", "serve"]


def test_procfile_matches_the_architecture_table():
    rows = re.findall(r"^\|\s*([a-z]+)\s*\|\s*`([^`]+)`", ARCHITECTURE.read_text(), re.MULTILINE)
    table = {name: shlex.split(command) for name, command in rows if name in PROCESS_ORDER}
    assert table == PROCESSES


def test_every_process_has_exactly_one_skaffold_artifact():
    assert set(skaffold_artifacts()) == set(PROCESSES)


@pytest.mark.parametrize("name", PROCESS_ORDER)
def test_image_command_is_the_procfile_command(name):
    artifact = skaffold_artifacts()[name]
    docker = artifact["docker"]
    assert artifact["image"] == f"crm-{name}"
    assert artifact.get("context", ".") == "."
    assert docker["dockerfile"] == "deploy/Dockerfile"
    stages = parse_dockerfile()
    target = docker["target"]
    assert target in stages, f"deploy/Dockerfile has no stage {target}"
    assert effective_command(stages, target) == PROCESSES[name]
    # The COMPONENT build arg installs crm-<COMPONENT>, which must provide the command's executable.
    assert "COMPONENT" in stages["builder"].args
    assert console_scripts(f"crm-{docker['buildArgs']['COMPONENT']}").get(PROCESSES[name][0]), (
        f"crm-{name} declares no console script {PROCESSES[name][0]}"
    )


@pytest.mark.parametrize("name", PROCESS_ORDER)
def test_target_stage_runs_as_the_fixed_non_root_user(name):
    stages = parse_dockerfile()
    chain = stage_chain(stages, skaffold_artifacts()[name]["docker"]["target"])
    # The runtime base of the target is the same Python image as the builder (the venv links into it).
    assert chain[-1].base == stages["builder"].base == "python:3.11-slim"
    text = DOCKERFILE.read_text()
    assert "USER 10001:10001" in text and "STOPSIGNAL SIGTERM" in text


def test_crmctl_ships_in_the_gateway_image():
    assert "crmctl" in console_scripts("crm-gateway")


def test_chart_runs_every_process_with_the_image_skaffold_builds():
    values = yaml.safe_load(VALUES.read_text())
    assert list(values["components"]) == PROCESS_ORDER
    release = yaml.safe_load(SKAFFOLD.read_text())["deploy"]["helm"]["releases"][0]
    templates = release["setValueTemplates"]
    for name, artifact in skaffold_artifacts().items():
        assert values["components"][name]["image"]["repository"] == artifact["image"]
        sanitized = re.sub(r"[/\-.:]", "_", artifact["image"])
        assert templates[f"components.{name}.image.ref"] == f"{{{{.IMAGE_FULLY_QUALIFIED_{sanitized}}}}}"


def test_chart_deployments_take_the_command_from_the_image():
    # The serving container sets no command/args, so the image's CMD (checked above) is what runs;
    # migrations run `crm-<name> migrate` (docs/architecture.md). `make chart-check` asserts the same
    # on every rendered value set.
    deployment = (ROOT / "charts" / "crm" / "templates" / "deployment.yaml").read_text()
    init, _, serving = deployment.partition("\n      containers:\n")
    assert serving, "deployment.yaml has no containers: section"
    assert not re.search(r"^\s+(command|args):", serving, re.MULTILINE)
    assert 'command: [{{ printf "crm-%s" $name | quote }}, "migrate"]' in init
    hooks = (ROOT / "charts" / "crm" / "templates" / "hook-jobs.yaml").read_text()
    assert '(list (printf "crm-%s" $name) "migrate")' in hooks


def test_dockerfile_parser_sees_inheritance_and_entrypoint_reset(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        'FROM python:3.11-slim AS base\nCMD ["python3"]\n'
        "FROM base AS inherits\n"
        'FROM base AS entry\nENTRYPOINT ["crm-sales"]\n'
        'FROM base AS both\nENTRYPOINT ["crm-sales"]\nCMD ["serve"]\n'
    )
    stages = parse_dockerfile(dockerfile)
    assert effective_command(stages, "inherits") == ["python3"]
    assert effective_command(stages, "entry") == ["crm-sales"]
    assert effective_command(stages, "both") == ["crm-sales", "serve"]
    dockerfile.write_text("FROM python:3.11-slim AS shell\nCMD crm-sales serve\n")
    with pytest.raises(AssertionError, match="exec form"):
        parse_dockerfile(dockerfile)
