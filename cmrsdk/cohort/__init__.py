"""Cohorts: many studies into one table of clinical measures, resumably, on a process pool or Ray.

`discover_studies` / `read_study_list` say which studies; `run_batch` segments those not yet
done through an engine (`LocalEngine`, `RayEngine`) into OUT with its journal, measures.csv and
cohort.png. The ``cmrsdk batch`` command is `command.run_command`.
"""

from __future__ import annotations

from .batch import BatchSummary, run_batch
from .discover import StudySource, discover_studies, read_study_list
from .engines import LocalEngine, RayEngine, create_engine
from .table import COLUMNS, bsa_mosteller
from .worker import PipelineSpec

__all__ = [
    "StudySource",
    "discover_studies",
    "read_study_list",
    "PipelineSpec",
    "run_batch",
    "BatchSummary",
    "create_engine",
    "LocalEngine",
    "RayEngine",
    "COLUMNS",
    "bsa_mosteller",
]
