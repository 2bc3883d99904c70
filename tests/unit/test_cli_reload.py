"""``zoe-vllm reload`` talks to the configured server with the server's own keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as cli

CONFIG = """
server: {host: HOST, port: 18099, default_model: m, api_keys: [from-config],
         allow_unauthenticated: false}
models:
  - {name: m, role: fast, path: /nowhere}
"""


class Answer:
    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self) -> bytes:
        return json.dumps({"model": "m", "reloading": True}).encode()


@pytest.mark.parametrize(("host", "expected"), [("10.1.2.3", "10.1.2.3"),
                                                ("0.0.0.0", "127.0.0.1")])
def test_reload_uses_the_configured_host_and_the_servers_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, expected: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(CONFIG.replace("HOST", host))
    monkeypatch.delenv("ZOE_VLLM_API_KEYS", raising=False)
    sent: list[Any] = []

    def urlopen(req: Any, timeout: float) -> Answer:
        sent.append(req)
        return Answer()

    monkeypatch.setattr(cli.urllib.request, "urlopen", urlopen)
    assert cli.main(["--config", str(path), "reload", "m"]) == 0
    assert len(sent) == 1
    assert sent[0].full_url == f"http://{expected}:18099/admin/models/m/reload"
    assert sent[0].get_method() == "POST"
    assert sent[0].get_header("Authorization") == "Bearer from-config"
