"""The CPU masks of an engine's threads while it infers, read from /proc in a fresh process (an
inference runtime pins its threads once per process, at its first session or compilation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PROBE = """
import glob, json, os, sys, threading
import numpy as np
from cmrsdk.engines import create_engine
engine = create_engine(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
mask = open("/proc/self/status").read().split("Cpus_allowed_list:")[1].split()[0]
seen, done = set(), threading.Event()
def infer():
    for _ in range(20):
        engine.run(np.zeros((8, 1, 128, 128), np.float32))
    done.set()
worker = threading.Thread(target=infer)
worker.start()
while not done.is_set():  # every thread's CPU mask while the inference threads run
    for task in glob.glob(f"/proc/{os.getpid()}/task/*/status"):
        try:
            seen.add(open(task).read().split("Cpus_allowed_list:")[1].split()[0])
        except OSError:
            pass
worker.join()
print(mask, *sorted(seen))
"""


def thread_masks(model: Path, backend: str, **options: object) -> tuple[str, list[str]]:
    """(the process's CPU mask, the distinct masks its threads had while ``backend`` ran
    ``model`` 20 times on 8 slices of 128 x 128), as /proc's ``Cpus_allowed_list`` strings."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model), backend, json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mask, *seen = done.stdout.split()
    return mask, seen
