"""cmrsdk: routed cardiac MRI segmentation for scanner-side deployment.

The short public surface; everything else lives in its module (``cmrsdk.io``,
``cmrsdk.preprocess``, ``cmrsdk.engines``, ``cmrsdk.metrics``, ``cmrsdk.evaluation``, ...).
Importing cmrsdk imports neither torch nor onnxruntime; the readers (pydicom, nibabel) load on
first use of `read_study`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

# onnxruntime (1.29 and later) records usage events with a device identifier on Linux and macOS
# (~/.cache/Microsoft/DeveloperTools/.onnxruntime) and uploads them: a scanner-side SDK sends
# nothing unasked. Read once, when onnxruntime first starts, so it is set here, before any engine
# loads; a value the user set (ORT_DISABLE_TELEMETRY=0) stands. README "Privacy".
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from ._version import __version__
from .bundle import load_bundle
from .errors import CmrError
from .pipeline import Pipeline, Segmentation, StudySegmentation
from .types import Stack, Study, StudyInfo

if TYPE_CHECKING:
    # for type checkers only: at run time `__getattr__` imports it on first use (pydicom, nibabel);
    # without this, `cmrsdk.read_study` is typed Any (sweep 48)
    from .io import read_study as read_study

#: the demo bundle shipped inside the package (trained on ACDC by export/, see README).
DEMO_BUNDLE = Path(__file__).resolve().parent / "demo" / "bundle"

__all__ = [
    "CmrError",
    "Stack",
    "Study",
    "StudyInfo",
    "Pipeline",
    "Segmentation",
    "StudySegmentation",
    "load_bundle",
    "read_study",
    "DEMO_BUNDLE",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # read_study pulls in pydicom and nibabel: load them when first asked for, not at import
    if name == "read_study":
        from .io import read_study

        return read_study
    raise AttributeError(f"module 'cmrsdk' has no attribute {name!r}")
