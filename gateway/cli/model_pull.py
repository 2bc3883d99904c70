"""`zoe-vllm models pull`: put a profile's model weights into the model directory.

Two sources: the Hugging Face hub (``huggingface_hub.snapshot_download``, for
machines with internet; resumable, with progress bars), or ``--from DIR``, a
local folder that already holds the snapshots (copied from another machine, a
USB disk, or a Hugging Face cache). Only what vLLM loads is fetched: weights in
safetensors, configs, tokenizer files and chat templates.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.config import Backend, LoadedConfig, ModelConfig, Provision

# What vLLM needs from a model repo; everything else (GGUF, .bin/.pth duplicates,
# ONNX, the "original/" Meta checkpoints) is gigabytes it never reads.
WANTED = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.model", "*.tiktoken",
          "*.txt", "*.jinja", "*.py"]
SKIPPED_DIRS = ("original", "onnx", ".cache")

Say = Callable[[str], None]


class PullError(RuntimeError):
    """A model could not be pulled; the message says which and why."""


@dataclass(frozen=True)
class Outcome:
    model: str
    dest: Path
    action: str  # "downloaded" | "copied" | "linked" | "present" | "skipped: <why>"


def wanted(rel: Path) -> bool:
    if rel.parts and rel.parts[0] in SKIPPED_DIRS:
        return False
    return any(rel.match(pattern) for pattern in WANTED)


def is_complete(path: Path) -> bool:
    """A loadable snapshot: a config.json and at least one safetensors file."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def find_local(source: Path, model: ModelConfig, dest: Path) -> Path | None:
    """The snapshot for ``model`` under ``source``: a folder named like the model
    directory or the repo, or a Hugging Face cache entry (``models--org--name``)."""
    names = [dest.name]
    if model.hf_repo:
        names += [model.hf_repo.split("/")[-1], model.hf_repo.replace("/", "--")]
    for name in names:
        if is_complete(source / name):
            return source / name
    if model.hf_repo:
        cache = source / f"models--{model.hf_repo.replace('/', '--')}" / "snapshots"
        snapshots = sorted((p for p in cache.glob("*") if is_complete(p)),
                           key=lambda p: p.stat().st_mtime, reverse=True)
        if snapshots:
            return snapshots[0]
    return None


def copy_snapshot(src: Path, dest: Path, *, link: bool, say: Say) -> int:
    """Copy (or symlink) the wanted files; files already there at the same size are kept,
    so an interrupted copy resumes. Returns the number of files written."""
    written = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or not wanted(rel):
            continue
        real = path.resolve()  # HF caches keep blobs behind symlinks
        target = dest / rel
        if target.is_file() and target.stat().st_size == real.stat().st_size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if link:
            target.symlink_to(real)
        else:
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(real, partial)
            os.replace(partial, target)
        say(f"  {'linked' if link else 'copied'} {rel} ({real.stat().st_size / 1e6:.1f} MB)")
        written += 1
    return written


def download(repo: str, dest: Path) -> None:
    from huggingface_hub import snapshot_download

    # Resumes partial files; tqdm progress bars on the terminal.
    snapshot_download(repo_id=repo, local_dir=str(dest),
                      allow_patterns=WANTED, ignore_patterns=[f"{d}/*" for d in SKIPPED_DIRS])


def pull(cfg: LoadedConfig, *, names: list[str] | None = None, source: Path | None = None,
         link: bool = False, say: Say = print,
         fetch: Callable[[str, Path], None] = download) -> list[Outcome]:
    """Pull every model of the profile (or those named) that is not complete yet."""
    models = cfg.models
    if names:
        known = {m.name for m in models}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise PullError(f"not in {cfg.source.name}: {', '.join(unknown)} "
                            f"(models: {', '.join(sorted(known))})")
        models = [m for m in models if m.name in names]
    if source is not None and not source.is_dir():
        raise PullError(f"--from {source}: not a directory")
    outcomes: list[Outcome] = []
    done: set[Path] = set()
    for m in models:
        if m.backend is not Backend.VLLM:
            outcomes.append(Outcome(m.name, Path(m.url or ""), "skipped: served remotely"))
            continue
        dest = cfg.model_path(m)
        if dest in done:
            continue
        done.add(dest)
        outcomes.append(_pull_one(m, dest, source, link, say, fetch))
    return outcomes


def _pull_one(m: ModelConfig, dest: Path, source: Path | None, link: bool, say: Say,
              fetch: Callable[[str, Path], None]) -> Outcome:
    if m.provision is not Provision.NONE:
        return Outcome(m.name, dest, "skipped: built locally by `zoe-vllm provision`")
    if source is not None:
        src = find_local(source, m, dest)
        if src is None:
            looked = ", ".join([dest.name, *([m.hf_repo] if m.hf_repo else [])])
            raise PullError(f"{m.name}: no snapshot under {source} (looked for {looked} "
                            "with config.json and *.safetensors)")
        say(f"{m.name}: {src} -> {dest}")
        dest.mkdir(parents=True, exist_ok=True)
        copy_snapshot(src, dest, link=link, say=say)
        action = "linked" if link else "copied"
    elif is_complete(dest):
        return Outcome(m.name, dest, "present")
    elif m.hf_repo is None:
        return Outcome(m.name, dest, "skipped: no `hf_repo` in the profile")
    else:
        say(f"{m.name}: {m.hf_repo} -> {dest}")
        dest.mkdir(parents=True, exist_ok=True)
        fetch(m.hf_repo, dest)
        action = "downloaded"
    if not is_complete(dest):
        raise PullError(f"{m.name}: {dest} has no config.json and *.safetensors after the pull")
    return Outcome(m.name, dest, action)
