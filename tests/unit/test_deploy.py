"""The Jetson container files: what they promise, and that Docker's tools accept them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import check_image

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile.jetson"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def compose_command() -> list[str] | None:
    """Docker Compose v2: the docker CLI plugin, or a standalone docker-compose
    (`make lint-deploy` puts one in the venv)."""
    if shutil.which("docker"):
        done = subprocess.run(["docker", "compose", "version"], capture_output=True,
                              check=False)
        if done.returncode == 0:
            return ["docker", "compose"]
    for candidate in (Path(sys.executable).parent / "docker-compose",
                      shutil.which("docker-compose")):
        if candidate and Path(candidate).exists():
            return [str(candidate)]
    return None


def test_zoe_vllm_service_runs_safely_on_the_jetson() -> None:
    svc = compose()["services"]["zoe-vllm"]
    assert svc["runtime"] == "nvidia"
    assert svc["init"] is True  # reaps the worker and EngineCore processes
    assert svc["restart"] == "unless-stopped"
    assert svc["command"] == ["serve", "--host", "0.0.0.0", "--allow-unauthenticated"]
    assert svc["environment"]["ZOE_VLLM_PROFILE"] == "${ZOE_VLLM_PROFILE:-jetson}"
    # the repository's profiles, mounted: an edit applies on restart
    assert svc["environment"]["ZOE_VLLM_CONFIG"] == \
        "/opt/zoe-vllm/profiles/${ZOE_VLLM_PROFILE:-jetson}.yaml"
    assert "../shared/profiles:/opt/zoe-vllm/profiles:ro" in svc["volumes"]
    # inside: all interfaces; outside: the host's loopback unless the user opts in
    assert svc["ports"] == ["${ZOE_VLLM_BIND:-127.0.0.1}:11434:11434"]
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    targets = [v.removesuffix(":ro").rsplit(":", 1)[1] for v in svc["volumes"]]
    assert targets == ["/opt/zoe-vllm/models", "/opt/zoe-vllm/logs", "/root/.cache",
                       "/opt/zoe-vllm/profiles", "/opt/zoe-vllm/templates",
                       "/run/jtop.sock", "/etc/nv_tegra_release"]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile.jetson"


def test_prometheus_and_optional_grafana_use_the_deploy_configs() -> None:
    services = compose()["services"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in \
        services["prometheus"]["volumes"]
    assert "profiles" not in services["prometheus"]
    grafana = services["grafana"]
    assert grafana["profiles"] == ["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith(("127.0.0.1:", "${ZOE_VLLM_BIND:-127.0.0.1}",
                                    "${GRAFANA_BIND:-127.0.0.1}"))


def test_image_pins_its_base_and_installs_only_our_project() -> None:
    text = DOCKERFILE.read_text()
    default = next(line for line in text.splitlines() if line.startswith("ARG BASE_IMAGE="))
    tag = default.split(":", 1)[1]
    assert "latest" not in tag and "r36.4" in tag and "cu126" in tag
    build_arg = compose()["services"]["zoe-vllm"]["build"]["args"]["BASE_IMAGE"]
    assert build_arg == "${ZOE_VLLM_BASE_IMAGE:-" + default.split("=", 1)[1] + "}"
    assert "--constraint" in text and "check_image.py --profile jetson" in text
    assert "vllm" not in text.split("pip install", 1)[1].split("\n")[0]


def test_the_image_check_knows_what_the_workers_import_from_vllm() -> None:
    # Through the compat layer (its names: tests/unit/test_vllm_compat.py); a direct
    # `from vllm... import` written in workers/ would be checked too.
    assert check_image.direct_vllm_imports() == []
    pairs = check_image.vllm_imports("from vllm.v1.engine.async_llm import AsyncLLM\n"
                                     "from json import loads\n")
    assert pairs == [("vllm.v1.engine.async_llm", "AsyncLLM")]
    assert check_image.missing_imports([("json", "loads"), ("json", "nope"),
                                        ("no_such_module_zoe", "x")]) == \
        ["json.nope", "no_such_module_zoe.x (No module named 'no_such_module_zoe')"]


def test_the_image_check_fails_naming_what_this_vllm_lacks(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from workers.engine import vllm_compat

    monkeypatch.setattr(vllm_compat, "check", lambda: [
        "init_app_state: none of vllm.x.init_app_state (No module named 'vllm.x')"])
    assert check_image.main(["--profile", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "lacks what the workers use" in err and "init_app_state: none of" in err


def test_make_up_runs_natively_here_and_the_compose_stack_on_a_jetson() -> None:
    def dry(*args: str) -> str:
        done = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True,
                              check=True)
        return done.stdout

    native = dry("up")
    assert re.search(r"-m gateway\.cli .*\bup$", native, re.MULTILINE), native
    assert "docker" not in native
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("this is a Jetson: the detected default is the compose stack")
    jetson = dry("up", "DEPLOY=compose")
    assert "docker compose -f deploy/docker-compose.yml" in jetson
    assert "up -d --build --wait" in jetson and "gateway.cli.main" not in jetson
    assert "--profile grafana" in dry("up", "DEPLOY=compose", "GRAFANA=1")


def test_compose_file_is_valid_for_docker_compose() -> None:
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose v2 here (no `docker compose` plugin, no "
                    "docker-compose); `make lint-deploy` installs one")
    done = subprocess.run([*cmd, "-f", str(COMPOSE_FILE), "--profile", "grafana", "config",
                           "--services"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["zoe-vllm", "prometheus", "grafana"]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    found = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed; `make lint-deploy` installs it")
    done = subprocess.run([found, str(DOCKERFILE)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
