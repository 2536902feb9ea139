"""cmrsdk: routed cardiac MRI segmentation for scanner-side deployment.

The short public surface; everything else lives in its module (``cmrsdk.io``,
``cmrsdk.preprocess``, ``cmrsdk.engines``, ``cmrsdk.metrics``, ``cmrsdk.evaluation``, ...).
"""
from __future__ import annotations

from .errors import CmrError
from .types import Stack, Study, StudyInfo

__version__ = "0.1.0"

__all__ = ["CmrError", "Stack", "Study", "StudyInfo", "__version__"]
