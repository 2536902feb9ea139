"""Forwarding: results go to a remote AE by C-STORE, retried with back-off until acknowledged."""

from __future__ import annotations

import errno
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from .spool import Spool
from .._warn import quiet

__all__ = ["Destination", "parse_destination", "Forwarder", "backoff_s", "is_permanent_refusal"]

log = logging.getLogger("cmrsdk.serve")

_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """A remote Storage SCP: AE title, host, port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str, option: str = "--forward") -> Destination:
    """``AET@HOST:PORT`` -> :class:`Destination`; errors name ``option``."""
    match = _DESTINATION.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise InputError(
            f"{option} value '{text}' is invalid; expected AET@HOST:PORT, e.g. ORTHANC@pacs.local:4242 "
            "(AE title of 1 to 16 characters, port 1 to 65535)"
        )
    return Destination(match["aet"].strip(), match["host"], int(match["port"]))


#: C-STORE failure statuses a retry of the same file cannot change (PS3.4 B.2.3): 0xA9xx data set
#: does not match the SOP class, 0xCxxx cannot understand; 0x0122 SOP class not supported.
def is_permanent_refusal(code: int) -> bool:
    """Whether a C-STORE failure status says the peer will never store this file as it is."""
    return code == 0x0122 or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF


def backoff_s(attempts: int, *, base_s: float = 1.0, cap_s: float = 60.0) -> float:
    """Seconds to wait after ``attempts`` failed tries: 1, 2, 4, ... up to ``cap_s``."""
    return min(cap_s, base_s * 2.0 ** max(0, attempts - 1))


def _sop_class_name(path: Path) -> str:
    """The SOP class of a result file, by name ('Segmentation Storage'), or its UID."""
    from pydicom.uid import UID

    try:
        return str(UID(_context_of(path)[0]).name)
    except Exception:  # unreadable: the caller's message names the file anyway
        return "its SOP class"


def _context_of(path: Path) -> tuple[str, str]:
    import pydicom

    with quiet():
        meta = pydicom.dcmread(str(path), stop_before_pixels=True).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


class Forwarder(threading.Thread):
    """Sends every pending delivery of the spool to ``destination``; one association per batch.

    A failed association or a failure status leaves the delivery pending with its next
    attempt after :func:`backoff_s`; the state is in the spool, so back-off and pending
    deliveries survive a restart. With ``tls`` (:func:`cmrsdk.serve.scp.client_tls_context`)
    every association is TLS, the peer's certificate checked against the destination's host.
    A delivery the peer refuses for good (no presentation context for its SOP class, or a
    status of `is_permanent_refusal`) is tried ``max_attempts`` times in all, then recorded as
    undeliverable (`Spool.mark_undeliverable`) and logged as an error; network failures and
    transient statuses are retried for as long as the node runs.
    """

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        *,
        ae_title: str,
        stop: threading.Event,
        on_final: Callable[[str], None],
        backoff_cap_s: float = 60.0,
        timeout_s: float = 30.0,
        tls: ssl.SSLContext | None = None,
        max_attempts: int = 10,
    ) -> None:
        super().__init__(name="cmrsdk-forwarder", daemon=True)
        if max_attempts < 1:
            raise InputError(f"'max_attempts' of the forwarder must be >= 1, got {max_attempts}")
        self.max_attempts = int(max_attempts)
        self.spool, self.destination, self.ae_title, self.stop, self.on_final = (
            spool,
            destination,
            ae_title,
            stop,
            on_final,
        )
        self.backoff_cap_s, self.timeout_s, self.tls = backoff_cap_s, timeout_s, tls
        self.wake = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            due = self.spool.due_deliveries()
            if due:
                self.send(due)
                continue
            following = self.spool.next_delivery_at()
            wait = 0.25 if following is None else min(0.25, max(0.0, following - time.time()))
            self.wake.wait(wait)
            self.wake.clear()

    def send(self, due: list[tuple[str, str, int]]) -> None:
        from pynetdicom import AE

        contexts: dict[str, set[str]] = {}
        readable = []
        for path, series_uid, attempts in due:
            try:
                sop_class, syntax = _context_of(Path(path))
            except Exception as exc:  # a result that vanished (deleted, or recorded relative to another cwd)
                why = f"cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})"
                # gone, or not a DICOM file: given up after max_attempts like a refusal; any other
                # OSError (EIO, ESTALE on a network share, EACCES) may pass: retried for good
                gone = not isinstance(exc, OSError) or exc.errno == errno.ENOENT
                if attempts == 0:  # said once
                    log.warning(
                        "forward to %s: result file %s %s; %s",
                        self.destination,
                        path,
                        why,
                        f"tried {self.max_attempts} times in all, then not forwarded"
                        if gone
                        else "retrying with back-off",
                    )
                self._failed(path, why, attempts, gone, quiet=True, unreadable=True)
                continue
            contexts.setdefault(sop_class, set()).add(syntax)
            readable.append((path, series_uid, attempts))
        due = readable
        if not contexts:
            return
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class, syntaxes in contexts.items():
            ae.add_requested_context(sop_class, sorted(syntaxes))
        tls_args = (self.tls, self.destination.host) if self.tls else None
        assoc = ae.associate(
            self.destination.host, self.destination.port, ae_title=self.destination.ae_title, tls_args=tls_args
        )
        if not assoc.is_established:
            refused = sorted(
                {str(getattr(cx.abstract_syntax, "name", cx.abstract_syntax)) for cx in assoc.rejected_contexts}
            )
            if refused and not assoc.accepted_contexts:
                # the peer answered, and takes none of these SOP classes: a retry cannot change that
                why = f"the peer accepts no presentation context for {', '.join(refused)} (it does not store them)"
            else:
                why = "association not established" + (
                    " (TLS: see the peer's certificate and --forward-tls-ca)" if self.tls else ""
                )
            permanent = bool(refused and not assoc.accepted_contexts)
            for path, _, attempts in due:
                self._failed(path, f"{why} with {self.destination}", attempts, permanent, quiet=True)
            log.warning(
                "forward to %s: %s; %d result file(s) wait, next try in %.0f s",
                self.destination,
                why,
                self.spool.pending_deliveries(),  # all of them, not only those due in this batch
                backoff_s(due[0][2] + 1, cap_s=self.backoff_cap_s),
            )
            return
        try:
            for path, _, attempts in due:
                if self.stop.is_set():
                    break
                permanent = False
                try:
                    status = assoc.send_c_store(Path(path))
                except Exception as exc:  # a file pynetdicom cannot send: retried later, never fatal
                    status, error = None, f"{type(exc).__name__}: {exc}"
                    if "No presentation context" in str(exc):
                        error = f"the peer does not accept {_sop_class_name(Path(path))} (no presentation context)"
                        permanent = True
                else:
                    code = int(status.Status) if status is not None and "Status" in status else None
                    error = "no response (association lost)" if code is None else f"status 0x{code:04X}"
                    # 0x0000 success; 0xB000, 0xB007, 0xB006: stored with a warning (PS3.4 B.2.3)
                    if code is not None and (code == 0 or code in (0xB000, 0xB006, 0xB007)):
                        finished = self.spool.mark_delivered(path)
                        if finished:
                            self.on_final(finished)
                        continue
                    permanent = code is not None and is_permanent_refusal(code)
                self._failed(path, error, attempts, permanent)
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()

    def _failed(
        self, path: str, error: str, attempts: int, permanent: bool, *, quiet: bool = False, unreadable: bool = False
    ) -> None:
        """Record a failed try (``attempts`` made before it): retried after back-off, or, refused
        for good (or ``unreadable``) ``max_attempts`` times, undeliverable."""
        if permanent and attempts + 1 >= self.max_attempts:
            finished = self.spool.mark_undeliverable(path, error)
            log.error(
                "forward to %s: %s %s %d times (%s): not forwarded%s",
                self.destination,
                path if unreadable else Path(path).name,
                "tried" if unreadable else "refused",
                attempts + 1,
                error,
                "" if unreadable else "; it stays in the results folder",
            )
            if finished:
                self.on_final(finished)
            return
        self.spool.mark_delivery_failed(path, error, backoff_s(attempts + 1, cap_s=self.backoff_cap_s))
        if not quiet:
            log.warning(
                "forward to %s: %s refused (%s); retrying with back-off", self.destination, Path(path).name, error
            )
