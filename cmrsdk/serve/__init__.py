"""``cmrsdk serve``: a DICOM node that receives series by C-STORE and answers with SEG and SR.

Modules, one job each: :mod:`.spool` (instances on disk, queue state in SQLite), :mod:`.scp`
(Storage and Verification SCP), :mod:`.worker` (series completion, segmentation),
:mod:`.forward` (C-STORE of results with back-off), :mod:`.node` (all of them together),
:mod:`.stacks` (one-slice series stacked), :mod:`.retrieve` (C-FIND and C-GET from a PACS,
``cmrsdk retrieve``) and :mod:`.command` (the command lines). pynetdicom is imported when a node starts, not here.
"""

from __future__ import annotations

from .forward import Destination, parse_destination
from .node import Node, NodeConfig
from .scp import ScpOptions, tls_context
from .spool import Spool, SpoolBusy, SpoolFull, format_status, read_status

__all__ = [
    "Node",
    "NodeConfig",
    "ScpOptions",
    "Destination",
    "parse_destination",
    "tls_context",
    "Spool",
    "SpoolFull",
    "SpoolBusy",
    "read_status",
    "format_status",
]
