"""A call made in a child forked after the parent used an engine (torch's thread pool does not
survive fork: the torch engines refuse there, where the call used to hang)."""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import pytest


def call_in_forked_child(engine: Any, x: np.ndarray, timeout_s: float = 60.0) -> str:
    """What ``engine.run(x)`` does in a forked child: "ran", "<ExceptionType>: <message>", or a
    line saying it gave no answer within ``timeout_s`` (hung). Skips where there is no fork."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no 'fork' start method on this platform")
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        try:
            engine.run(x)
            send.send("ran")
        except Exception as exc:
            send.send(f"{type(exc).__name__}: {exc}")

    process = context.Process(target=child)
    process.start()
    try:
        return receive.recv() if receive.poll(timeout_s) else f"no answer in {timeout_s:g} s (hung)"
    finally:
        process.kill()
        process.join()
