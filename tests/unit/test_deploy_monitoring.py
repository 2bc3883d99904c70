"""deploy/prometheus.yml and the Grafana provisioning agree with each other and the seed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SEED_PANELS = ("GPU memory", "GPU utilization", "GPU temperature",
               "Active requests per model", "Model failure counts", "Response times", "Uptime")
NEW_PANELS = ("Time to first token", "Tokens per second", "Fallbacks", "Swaps",
              "Route reasons")


def panels() -> list[dict[str, Any]]:
    dash = json.loads((DEPLOY / "grafana/dashboards/zoe-vllm.json").read_text())
    return [p for p in dash["panels"] if p["type"] != "row"]


def test_prometheus_scrapes_the_seed_target() -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["metrics_path"] == "/metrics/prometheus"
    assert job["scrape_interval"] == "15s"
    assert job["static_configs"] == [{"targets": ["zoe-vllm:11434"]}]


def test_dashboard_has_the_seed_panels_and_the_new_series() -> None:
    titles = [p["title"] for p in panels()]
    for title in SEED_PANELS + NEW_PANELS:
        assert title in titles
    assert len(titles) == len(set(titles))


def test_every_target_uses_the_provisioned_datasource_and_zoe_series() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
                        .read_text())["datasources"][0]
    for panel in panels():
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == ds["uid"]
            names = set(re.findall(r"\b([a-z_]+)(?=[{\[)\s]|$)", t["expr"]))
            series = {n for n in names if n.startswith("zoe_")}
            assert series, f"{panel['title']}: {t['expr']}"
    ids = [p["id"] for p in json.loads((DEPLOY / "grafana/dashboards/zoe-vllm.json")
                                       .read_text())["panels"]]
    assert len(ids) == len(set(ids))


def test_gpu_panels_fall_back_to_labelled_cpu_figures() -> None:
    gpu = {p["title"]: p for p in panels() if p["title"].startswith("GPU ")}
    assert set(gpu) == {"GPU memory", "GPU utilization", "GPU temperature"}
    for panel in gpu.values():
        assert "kind=cpu" in panel["description"]
        for t in panel["targets"]:
            # `or on()`: the CPU figure only where there is no GPU series at all
            assert re.fullmatch(r"zoe_gpu_\w+ or on\(\) zoe_\w+", t["expr"]), t["expr"]
            assert "{{kind}}" in t["legendFormat"]


def test_dashboard_provider_reads_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/zoe.yml")
                              .read_text())["providers"][0]
    path = provider["options"]["path"]
    compose = (DEPLOY / "docker-compose.yml").read_text()
    assert f"./grafana/dashboards:{path}" in compose
    assert "./grafana/provisioning:/etc/grafana/provisioning" in compose
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml" in compose
