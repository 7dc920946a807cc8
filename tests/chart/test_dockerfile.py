"""The image the chart runs (no Docker engine here, so the Dockerfile is held to what the chart
relies on: the entrypoint, the non-root uid, a slim multi-stage build)."""

from __future__ import annotations

import json
import re

import yaml

from e2e.chart import CHART

REPO = CHART.parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_multi_stage_on_python_slim():
    steps = instructions()
    froms = [args for op, args in steps if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in steps
    # The final stage only copies the built virtualenv out of the build stage.
    copies = [args for op, args in final_stage() if op == "COPY"]
    assert copies == ["--from=build /opt/comptroller /opt/comptroller"]


def test_runs_as_the_uid_the_chart_expects():
    user = [args for op, args in final_stage() if op == "USER"]
    ctx = VALUES["podSecurityContext"]
    assert user == [f"{ctx['runAsUser']}:{ctx['runAsGroup']}"] == ["65532:65532"]


def test_entrypoint_is_the_console_script_the_chart_passes_subcommands_to():
    (entrypoint,) = [args for op, args in final_stage() if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["comptroller"]


def test_read_only_root_friendly():
    env = " ".join(args for op, args in final_stage() if op == "ENV")
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    assert "compileall" in DOCKERFILE  # bytecode is written at build time, never at run time


def test_build_context_is_only_the_package():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[:4] == ["*", "!pyproject.toml", "!README.md", "!controller/"]
