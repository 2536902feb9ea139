"""Open a page in real headless Chromium and report what a reader's browser would see.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (file descriptors 3 and 4, JSON
messages ended by NUL), so nothing beyond the Debian ``chromium`` package is needed. Reports
every network request the page made, console errors and uncaught exceptions, each image's
natural size, the page text and a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["chromium_binary", "PageVisit", "visit"]

_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


def chromium_binary() -> str | None:
    """The Chromium executable on PATH (Debian: ``chromium``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageVisit:
    """What loading one page showed."""

    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: list[dict[str, Any]] = field(default_factory=list)  # {alt, naturalWidth, naturalHeight, complete}
    text: str = ""  # document.body.innerText
    screenshot_png: bytes = b""
    pdf: bytes = b""  # the page printed on A4, when asked for
    title: str = ""


class _Pipe:
    def __init__(self, binary: str, profile: str, width: int, height: int) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        # the child's fds 3 and 4 are the protocol's read and write ends; copy through high
        # numbers first, since the pipes themselves may sit on 3 and 4
        def _child_fds() -> None:
            os.dup2(to_child_r, 100)
            os.dup2(from_child_w, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.process = subprocess.Popen(
            [binary, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_child_fds,
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            for event in self._read(deadline):
                self.events.append(event)
                if event.get("method") == method:
                    return event

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):  # it may be gone already
            self.send("Browser.close", timeout=5.0)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_child)
        os.close(self._from_child)


_PROBE = """(() => ({
  title: document.title,
  text: document.body ? document.body.innerText : "",
  images: Array.from(document.images).map(i => ({alt: i.alt, naturalWidth: i.naturalWidth,
                                                  naturalHeight: i.naturalHeight, complete: i.complete}))
}))()"""


def visit(
    path: str | Path, *, width: int = 1280, height: int = 900, timeout: float = 60.0, pdf: bool = False
) -> PageVisit:
    """Load ``path`` in headless Chromium; return the requests, errors, images, text, a full-page screenshot
    and, with ``pdf``, the page printed on A4 (print styles applied)."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="cmrsdk-chromium-") as profile:
        pipe = _Pipe(binary, profile, width, height)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=timeout)
            probe = pipe.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=session)
            value = probe["result"]["value"]
            metrics = pipe.send("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            shot = pipe.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
                },
                session=session,
            )
            result = PageVisit(
                title=value["title"],
                text=value["text"],
                images=value["images"],
                screenshot_png=base64.b64decode(shot["data"]),
            )
            if pdf:
                printed = pipe.send(
                    "Page.printToPDF",
                    {"paperWidth": 8.27, "paperHeight": 11.69, "printBackground": True},
                    session=session,
                    timeout=timeout,
                )
                result.pdf = base64.b64decode(printed["data"])
            for event in pipe.events:
                method, params = event.get("method"), event.get("params", {})
                if method == "Network.requestWillBeSent":
                    result.requests.append(params["request"]["url"])
                elif method == "Network.loadingFailed":
                    result.errors.append(f"failed to load: {params.get('errorText')}")
                elif method == "Runtime.exceptionThrown":
                    result.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
                elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    result.errors.append(f"console: {params.get('args')}")
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    result.errors.append(f"log: {params['entry'].get('text')}")
            return result
        finally:
            pipe.close()
