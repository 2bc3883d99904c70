"""The ``zoe-vllm`` command: serve, up, down, status, provision, check-config, models pull."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.cli.budget import budget_arguments, check_budget
from gateway.ops.status_table import fetch
from shared import config as cfgmod


def _load(args: argparse.Namespace) -> cfgmod.LoadedConfig:
    """Precedence: --config, ZOE_VLLM_CONFIG, --profile, ZOE_VLLM_PROFILE, then the
    profile this machine's hardware calls for (jetson, gpu or cpu)."""
    profile = args.profile
    if not (args.config or os.environ.get("ZOE_VLLM_CONFIG") or profile
            or os.environ.get("ZOE_VLLM_PROFILE")):
        from shared.platform import detect_profile

        profile = detect_profile().profile
    try:
        return cfgmod.load(profile=profile, path=args.config)
    except cfgmod.ConfigError as exc:
        sys.exit(f"zoe-vllm: {exc}")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import build_app
    from gateway.edge.http_limits import protocol_class

    cfg = _load(args)
    logging.basicConfig(level=os.environ.get("ZOE_VLLM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO, URLs included: too chatty for probes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from gateway.edge.security import InsecureBind, check_bind, load_keys

    host = args.host or cfg.server.host
    port = args.port or cfg.server.port
    try:
        check_bind(host, load_keys(cfg),
                   args.allow_unauthenticated or cfg.server.allow_unauthenticated)
    except InsecureBind as exc:
        sys.exit(f"zoe-vllm: {exc}")
    app = build_app(cfg)
    logging.getLogger("zoe").info("serving profile %s on http://%s:%d", cfg.source.name, host,
                                  port)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=30,
                h11_max_incomplete_event_size=64 * 1024,
                http=protocol_class(cfg.server.header_timeout_s))
    return 0


def _pidfile(cfg: cfgmod.LoadedConfig) -> Path:
    return cfg.run_dir / "server.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(cfg: cfgmod.LoadedConfig) -> int | None:
    try:
        pid = int(_pidfile(cfg).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def cmd_up(args: argparse.Namespace) -> int:
    """Start the server in the background and return once it is healthy."""
    cfg = _load(args)
    url = server_url(cfg)
    if (pid := _running_pid(cfg)) is not None:
        print(f"zoe-vllm is already running (pid {pid}) at {url}")
        return 0
    cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    server_log = cfg.logs_dir / "server.log"
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg.source)]
    with open(server_log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)
    _pidfile(cfg).write_text(str(proc.pid))
    print(f"zoe-vllm starting (pid {proc.pid}, profile {cfg.source.stem}); "
          f"log: {server_log}")
    deadline = time.monotonic() + args.timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"zoe-vllm exited with code {proc.returncode}; last lines of {server_log}:")
            print("\n".join(server_log.read_text(errors="replace").splitlines()[-20:]))
            return 1
        status, body = fetch(f"{url}/health")
        line = _progress_line(body)
        if line and line != last:
            print(f"  {line}", flush=True)
            last = line
        if status == 200:
            print(f"zoe-vllm is up: {url}  (OpenAI API at {url}/v1, health at {url}/health)")
            return 0
        time.sleep(1)
    print(f"zoe-vllm did not become healthy within {args.timeout:.0f}s (--timeout); "
          f"it is still starting in the background — see {server_log} and `make status`")
    return 1


def _progress_line(body: dict[str, Any] | None) -> str:
    if not body:
        return "waiting for the gateway..."
    parts = []
    for name, w in body.get("workers", {}).items():
        stage = w.get("stage") or ""
        detail = w.get("detail") or ""
        text = f"{name}: {w['state']}"
        if stage and w["state"] != "ready":
            text += f" ({stage}{': ' + detail if detail else ''})"
        parts.append(text)
    return " | ".join(parts)


def cmd_down(args: argparse.Namespace) -> int:
    cfg = _load(args)
    pid = _running_pid(cfg)
    if pid is None:
        print("zoe-vllm is not running")
        _pidfile(cfg).unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + cfg.config.supervisor.stop_timeout_s + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        print(f"zoe-vllm (pid {pid}) did not stop in time; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _pidfile(cfg).unlink(missing_ok=True)
    print("zoe-vllm stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.edge.security import load_keys
    from gateway.ops import status_table

    cfg = _load(args)
    url = server_url(cfg)
    key = next(iter(load_keys(cfg)), None)
    status, body = status_table.fetch(f"{url}/health", key)
    if body is None:
        print(f"zoe-vllm is not answering at {url}")
        return 1
    _, metrics = status_table.fetch(f"{url}/metrics", key)
    if args.json:
        print(json.dumps({"health": body, "metrics": metrics}, indent=2))
    else:
        print(status_table.render(body, metrics))
    return 0 if status == 200 else 1


def server_url(cfg: cfgmod.LoadedConfig) -> str:
    """Where this machine reaches the configured server (a wildcard bind via loopback)."""
    host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{cfg.server.port}"


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running server to unload and load a model again (also from FAILED)."""
    from gateway.edge.security import load_keys

    cfg = _load(args)
    url = f"{server_url(cfg)}/admin/models/{args.model}/reload"
    headers = {}
    # The server's own keys (config, ZOE_VLLM_API_KEYS, keys file), as `status` uses them.
    key = next(iter(load_keys(cfg)), None)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(json.loads(resp.read()))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"zoe-vllm: {exc.code}: {exc.read().decode(errors='replace')}")
    except OSError as exc:
        print(f"zoe-vllm: the server is not answering ({exc})")
    return 1


def cmd_provision(args: argparse.Namespace) -> int:
    from workers.provision.models import provision

    cfg = _load(args)
    done: set[Path] = set()
    for m in cfg.models:
        dest = cfg.model_path(m)
        if m.provision is cfgmod.Provision.NONE or dest in done:
            continue
        print(f"{m.name}: {dest}")
        provision(m.provision.value, dest, lambda step: print(f"  {step}", flush=True))
        done.add(dest)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"{cfg.source}: OK")
    for m in cfg.models:
        extra = " (on demand)" if m.on_demand else ""
        where = cfg.model_path(m) if m.backend is cfgmod.Backend.VLLM else \
            f"{m.backend.value} {cfg.url(m)} ({m.remote_model or m.name})"
        print(f"  {m.name} [{m.role.value}]{extra} -> {where}")
    if args.no_budget:
        return 0
    return check_budget(args, cfg)


def cmd_models_pull(args: argparse.Namespace) -> int:
    from gateway.cli.model_pull import PullError, pull

    cfg = _load(args)
    source = Path(args.source).expanduser() if args.source else None
    try:
        outcomes = pull(cfg, names=args.model or None, source=source, link=args.link,
                        say=lambda line: print(line, flush=True))
    except PullError as exc:
        print(f"zoe-vllm: {exc}", file=sys.stderr)
        return 1
    for o in outcomes:
        print(f"{o.model}: {o.action} ({o.dest})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoe-vllm", description=__doc__)
    parser.add_argument("--profile", help="profile name (default: cpu; env ZOE_VLLM_PROFILE)")
    parser.add_argument("--config", help="config file path (env ZOE_VLLM_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server in the foreground")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="listen on a non-loopback address without an API key")
    serve.set_defaults(func=cmd_serve)
    up = sub.add_parser("up", help="start in the background; return when healthy")
    up.add_argument("--timeout", type=float, default=900.0)
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop a server started by `up`").set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="the workers as a table (state, memory, "
                            "requests, uptime, last probe, restarts)")
    status.add_argument("--json", action="store_true", help="/health and /metrics as JSON")
    status.set_defaults(func=cmd_status)
    reload = sub.add_parser("reload", help="unload and load a model again (even FAILED)")
    reload.add_argument("model")
    reload.set_defaults(func=cmd_reload)
    sub.add_parser("provision", help="build model weights that ship in packages"
                   ).set_defaults(func=cmd_provision)
    check = sub.add_parser("check-config", help="validate the configuration and check that "
                           "its models fit the device's memory")
    budget_arguments(check)
    check.set_defaults(func=cmd_check_config)
    models = sub.add_parser("models", help="manage model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="fetch the profile's models from the Hugging "
                                 "Face hub (or copy them from a local folder)")
    pull.add_argument("--from", dest="source", metavar="DIR",
                      help="copy snapshots from this folder instead of downloading")
    pull.add_argument("--link", action="store_true",
                      help="with --from: symlink the files instead of copying them")
    pull.add_argument("--model", action="append", metavar="NAME",
                      help="only this model (repeatable)")
    pull.set_defaults(func=cmd_models_pull)
    for p in [*sub.choices.values(), pull]:
        p.add_argument("--profile", default=argparse.SUPPRESS)
        p.add_argument("--config", default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
