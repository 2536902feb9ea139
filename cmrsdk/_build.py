"""What build made a result: the hash of cmrsdk's code and the versions of the runtimes that ran.

A version number names a release; two builds of one version (an edit, a rebuilt native module)
can segment differently, so the outputs carry the code's hash beside it (report.json, the DICOM
SEG and SR, the cohort table's options key).
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

__all__ = ["code_sha256", "runtime_versions", "RUNTIME_PACKAGES"]

#: backend -> the package whose version decides its arithmetic
RUNTIME_PACKAGES: dict[str, str] = {
    "openvino": "openvino",
    "onnx": "onnxruntime",
    "torchscript": "torch",
    "aoti": "torch",
    "tensorrt": "torch_tensorrt",
}


@functools.lru_cache(maxsize=1)
def code_sha256() -> str:
    """SHA-256 of cmrsdk's installed code (every .py and native module of the package, with their
    paths), once per process: what decides a result besides the options and the bundle. The
    DICOM node's own code (``serve/``) decides no number and is left out."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    code = (p for p in package.rglob("*") if p.suffix in (".py", ".so", ".pyd") and p.is_file())
    for path in sorted(p for p in code if p.relative_to(package).parts[0] != "serve"):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def runtime_versions(backends: list[str] | tuple[str, ...] | set[str]) -> dict[str, str]:
    """The installed version of the runtime package behind each of ``backends`` (names of
    `cmrsdk.engines.BACKENDS`), by package name; a package not installed is left out."""
    packages = sorted({RUNTIME_PACKAGES[b] for b in backends if b in RUNTIME_PACKAGES})
    return {package: version for package in packages if (version := _installed(package))}


@functools.lru_cache(maxsize=None)
def _installed(package: str) -> str | None:
    """``package``'s installed version, once per process (a metadata lookup is a file scan)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
