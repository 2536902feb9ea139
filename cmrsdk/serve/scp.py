"""The Storage SCP (and Verification SCP): every instance is on disk before success is answered."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import ssl
import sqlite3
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .spool import FINAL_STATES, NOT_A_STACK, Spool, SpoolFull, printable

__all__ = [
    "ScpOptions",
    "StorageScp",
    "ReceivedFile",
    "receive_into_files",
    "received_file",
    "discard_unfinished",
    "read_header",
    "accepted_transfer_syntaxes",
    "tls_context",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DUPLICATE_SOP_INSTANCE",
]

log = logging.getLogger("cmrsdk.serve")

#: C-STORE statuses (DICOM PS3.4 Table B.2-1)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4.2.1.4: a failure, unlike a resend of one series
STATUS_CANNOT_UNDERSTAND = 0xC000


#: lossless compressed transfer syntaxes accepted beside the uncompressed ones, where pydicom has
#: a decoder for them (the pylibjpeg plugins of ``cmrsdk[io]``): JPEG Lossless (SV1 and any
#: predictor), JPEG-LS Lossless, JPEG 2000 Lossless, RLE Lossless. Lossy syntaxes are not
#: accepted: a sender then decompresses, or sends the lossless original.
LOSSLESS_SYNTAXES = (
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
)


#: Deflated Explicit VR Little Endian, in pynetdicom's defaults but not accepted: a data set is
#: inflated whole, with no bound, when read (pynetdicom and pydicom have none to set), and 2 MB
#: of deflated zeros took the node 74 s and 4.4 GB (runs/redteam30). A sender proposes it beside
#: an uncompressed syntax, which it then uses; one proposing it alone is told no context.
DEFLATED = "1.2.840.10008.1.2.1.99"


def accepted_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the node (and ``cmrsdk retrieve``) accepts for storage: implicit
    and explicit VR little endian, explicit VR big endian, then each lossless compressed syntax
    whose decoder is installed (so that every instance received can be read); never deflated
    (:data:`DEFLATED`)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID
    from pynetdicom import DEFAULT_TRANSFER_SYNTAXES

    uncompressed = [uid for uid in DEFAULT_TRANSFER_SYNTAXES if uid != DEFLATED]
    return [*uncompressed, *(uid for uid in LOSSLESS_SYNTAXES if get_decoder(UID(uid)).is_available)]


@dataclass(frozen=True)
class ScpOptions:
    """Who may talk to the node and how much it takes at once."""

    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "CMRSDK"
    allow: tuple[str, ...] = ()  # calling AE titles accepted; empty: any
    max_associations: int = 8
    max_pdu: int = 65536  # bytes; 0: unlimited
    #: larger instances are refused with 0xA700 (bytes past it are counted, not written); None: no limit
    max_instance_bytes: int | None = 2 * 2**30
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)


def tls_context(cert: str | Path, key: str | Path, ca: str | Path | None = None) -> ssl.SSLContext:
    """A server-side TLS context (pynetdicom wraps each accepted socket with it).

    With ``ca``, callers must present a certificate signed by it (mutual TLS, as the DICOM
    TLS secure transport connection profile, PS3.15 B.1, expects).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if ca:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls_context(ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None) -> ssl.SSLContext:
    """A client-side TLS context for forwarding: the peer must present a certificate signed by
    ``ca`` and naming its host (or IP address) as given in ``--forward``; with ``cert`` and
    ``key`` this node presents its own (for peers that require mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key) if key else None)
    return context


# ---- receiving into files -------------------------------------------------------------------
# pynetdicom holds a C-STORE's data set in memory whole while it arrives, and the handler's copy
# of it doubles that: a 400 MB instance took the node 1.26 GB. Its chunked receiving
# (`_config.STORE_RECV_CHUNKED_DATASET`) writes each fragment to a file instead, but the switch
# is process-wide and the file goes to the system's temporary folder (a tmpfs is memory again;
# another disk means a copy). So the switch is made true only in the threads of associations of
# an AE given to `receive_into_files`, and pynetdicom's temporary file, for those, is a
# `ReceivedFile` in the folder given (the spool's own disk: the file is renamed into place).


class ReceivedFile:
    """One C-STORE data set written to a file as its fragments arrive, in the DICOM file format
    (preamble, file meta, data set as sent), so that no instance is held in memory.

    Bytes past ``limit`` are counted in :attr:`size`, not written, and a write that fails (a full
    disk) is kept in :attr:`error`, not raised in pynetdicom's thread: the handler refuses such an
    instance (0xA700). pynetdicom writes it (``write``, ``file.flush``), closes it after the handler
    and unlinks its ``name``, which is gone by then where the handler moved the file into place.
    """

    def __init__(self, directory: Path, limit: int | None) -> None:
        self.limit = limit
        self.size = 0  # bytes received, written or not
        self.error: OSError | None = None
        self.discarded = False
        self.file = self  # flushed after each fragment by pynetdicom: written unbuffered, nothing to flush
        self._fd: int | None = None
        self._lock = threading.Lock()  # closed by the handler's thread, pynetdicom's, or at the connection's end
        for _ in range(100):
            self.path = directory / f".receiving-{secrets.token_hex(8)}.dcm"
            try:  # the process's umask applies, as to the files written before (mkstemp's are 0600)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as exc:  # the folder is gone or cannot be written: refused by the handler
                self.error = exc
                break
        self.name = str(self.path)

    @property
    def over_limit(self) -> bool:
        return self.limit is not None and self.size > self.limit

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self._fd is not None and self.error is None and not self.over_limit:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        """Close and remove the file (nothing to remove once it was moved into place)."""
        self.discarded = True
        self.close()
        self.path.unlink(missing_ok=True)


#: the AEs whose C-STORE data sets are received into files: the folder and the size limit
_RECEIVERS: weakref.WeakKeyDictionary[Any, tuple[Path, int | None]] = weakref.WeakKeyDictionary()
_INSTALL = threading.Lock()


def _receiver_of_this_thread() -> tuple[Path, int | None] | None:
    """The folder and limit for the association whose DUL thread this is (pynetdicom decodes the
    P-DATA it receives in that thread), None for an AE not given to :func:`receive_into_files`."""
    ae = getattr(getattr(threading.current_thread(), "assoc", None), "ae", None)
    try:
        return _RECEIVERS.get(ae) if ae is not None else None
    except TypeError:  # not weakly referenceable: not one of ours
        return None


class _ChunkedForReceivers:
    """`_config.STORE_RECV_CHUNKED_DATASET`, true in the threads of the receivers' associations only."""

    def __bool__(self) -> bool:
        return _receiver_of_this_thread() is not None

    def __repr__(self) -> str:
        return "<true for the AEs given to cmrsdk.serve.scp.receive_into_files>"


def _temporary_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``NamedTemporaryFile`` for a chunked data set: a :class:`ReceivedFile` for ours."""
    from tempfile import NamedTemporaryFile

    receiver = _receiver_of_this_thread()
    if receiver is None:  # chunked receiving switched on for every AE by someone else
        return NamedTemporaryFile(*args, **kwargs)
    return ReceivedFile(*receiver)


def receive_into_files(ae: Any, directory: Path, *, limit: int | None = None) -> None:
    """Have every C-STORE data set that ``ae`` (a pynetdicom ``AE``) receives written to a
    :class:`ReceivedFile` in ``directory`` as it arrives, none larger than ``limit`` bytes; other
    AEs of the process receive as before (in memory). The handler takes it with
    :func:`received_file`; bind :func:`discard_unfinished` to ``EVT_CONN_CLOSE`` so that a
    transfer cut off leaves no file."""
    from pynetdicom import _config, dimse_messages

    with _INSTALL:
        if dimse_messages.NamedTemporaryFile is not _temporary_file:
            dimse_messages.NamedTemporaryFile = _temporary_file
        if _config.STORE_RECV_CHUNKED_DATASET is False:
            _config.STORE_RECV_CHUNKED_DATASET = _ChunkedForReceivers()  # type: ignore[assignment]
        _RECEIVERS[ae] = (Path(directory), limit)


def received_file(event: Any) -> ReceivedFile | None:
    """The file a C-STORE's data set was received into (:func:`receive_into_files`); None where
    it was received in memory (``event.encoded_dataset()``)."""
    received = getattr(event.request, "_dataset_file", None)
    return received if isinstance(received, ReceivedFile) else None


def discard_unfinished(event: Any) -> None:
    """``EVT_CONN_CLOSE`` handler: remove the files of data sets the connection's end left
    unhandled: one cut off mid-transfer, and those received but not yet handled (pynetdicom
    leaves both)."""
    dimse = getattr(event.assoc, "dimse", None)
    left = [getattr(getattr(dimse, "message", None), "_data_set_file", None)]
    left += [
        getattr(item[1], "_dataset_file", None)
        for item in list(getattr(getattr(dimse, "msg_queue", None), "queue", ()))
    ]
    for received in left:
        if isinstance(received, ReceivedFile):
            received.discard()


def read_header(path: Path, keywords: tuple[str, ...]) -> Any:
    """The elements ``keywords`` of a received file, read without its large values (pixel data,
    or any other large element: skipped, not read), as a pydicom ``Dataset``."""
    import pydicom

    return pydicom.dcmread(path, specific_tags=list(keywords), stop_before_pixels=True)


class StorageScp:
    """pynetdicom's threaded server (one thread per association) writing into ``spool``."""

    def __init__(self, spool: Spool, options: ScpOptions, *, abort_hold_s: float = 600.0) -> None:
        self.spool, self.options = spool, options
        #: how long a series whose sender aborted waits to be sent again (`Worker`; 0: not held)
        self.abort_hold_s = float(abort_hold_s)
        self._server: Any = None
        self._busy = 0
        self._idle = threading.Condition()
        self.counts = {"stored": 0, "duplicate": 0, "reused": 0, "reopened": 0, "late": 0, "refused": 0}
        # instances stored per series in each open association, to name what an abort cut off,
        # and the series each one sent (duplicates too: a whole resend ends a series' hold)
        self._received: dict[int, dict[str, int]] = {}
        self._sent: dict[int, set[str]] = {}
        # per association: instances refused per series (0xA700: the series is held, as for an
        # abort), and instances acknowledged but not processed (late, or a judged series sent
        # again), each named once when the association ends
        self._refused: dict[int, dict[str, int]] = {}
        self._ignored: dict[int, dict[str, tuple[str, int]]] = {}

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.options.ae_title)
        ae.maximum_associations = self.options.max_associations
        ae.maximum_pdu_size = self.options.max_pdu
        # an empty list accepts any calling AE; otherwise others get A-ASSOCIATE-RJ (calling AE not recognised)
        ae.require_calling_aet = list(self.options.allow)
        syntaxes = accepted_transfer_syntaxes()
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        # each instance is written to the spool's disk as it arrives, not held in memory
        receive_into_files(ae, self.spool.incoming, limit=self.options.max_instance_bytes)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, discard_unfinished),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_RELEASED, self._on_released),
        ]
        try:
            self._server = ae.start_server(
                (self.options.host, self.options.port),
                block=False,
                ssl_context=self.options.ssl_context,
                evt_handlers=handlers,
            )
        except OSError as exc:  # one line naming the port, not socketserver's traceback
            where = f"{self.options.host}:{self.options.port}"
            if exc.errno == errno.EADDRINUSE:
                raise InputError(
                    f"--port {self.options.port}: {where} is already in use (another cmrsdk serve or DICOM "
                    "node?); stop it or choose another --port"
                ) from exc
            if exc.errno == errno.EACCES:
                raise InputError(
                    f"--port {self.options.port}: not allowed to listen on {where} (ports below 1024 need root "
                    "or CAP_NET_BIND_SERVICE); choose a port of 1024 or more"
                ) from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InputError(f"--host {self.options.host}: no such address on this machine") from exc
            raise

    @property
    def port(self) -> int:
        """The port listened on (the one chosen by the system when started with port 0)."""
        return int(self._server.server_address[1])

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting; let the C-STORE being written finish; abort the associations left."""
        if self._server is None:
            return
        self._server.shutdown()
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=grace_s)
        for assoc in list(self._server.active_associations):
            assoc.abort()
        self._server = None

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        log.debug("association accepted from %s (%s)", printable(assoc.requestor.ae_title), assoc.requestor.address)
        # a syntax pydicom does not know is named by its UID, as the sender wrote it
        refused = sorted({printable(ts.name) for cx in assoc.rejected_contexts for ts in cx.transfer_syntax})
        if refused and not assoc.accepted_contexts:
            # the sender can store nothing here: say why in the node's log, not only in the sender's
            log.warning(
                "association from AE '%s' at %s: no presentation context accepted; transfer syntaxes offered: "
                "%s (this node takes uncompressed and lossless ones, not deflated: senders decompress lossy images)",
                printable(assoc.requestor.ae_title),
                assoc.requestor.address,
                ", ".join(refused),
            )

    def _on_rejected(self, event: Any) -> None:
        log.warning(
            "association rejected from AE '%s' at %s",
            printable(event.assoc.requestor.ae_title),
            event.assoc.requestor.address,
        )

    def _on_aborted(self, event: Any) -> None:
        with self._idle:
            received = self._received.pop(id(event.assoc), {})
            self._sent.pop(id(event.assoc), None)
        self._report_ended(event.assoc)
        for series_uid, count in received.items():
            held = self.abort_hold_s > 0 and self.spool.mark_interrupted(series_uid)
            log.warning(
                "association from AE '%s' aborted after %d instance(s) of series %s: %s",
                printable(event.assoc.requestor.ae_title),
                count,
                printable(series_uid),
                f"held, not segmented, until it is sent again (it fails after {self.abort_hold_s:g} s quiet)"
                if held
                else "the series is judged on what arrived when it falls quiet; if the sender gave up, send it "
                "again whole (its result is then replaced)",
            )

    def _on_released(self, event: Any) -> None:
        with self._idle:
            self._received.pop(id(event.assoc), None)
            sent = self._sent.pop(id(event.assoc), set())
        refused = self._report_ended(event.assoc)
        with self._idle:  # held still for the instances another open association had refused
            refused |= {uid for per_series in self._refused.values() for uid in per_series}
            for series_uid in sent - refused:  # a transfer that ended normally: no longer held for an abort
                self.spool.clear_interrupted(series_uid)

    def _report_ended(self, assoc: Any) -> set[str]:
        """One line per series of an ended association that had instances refused or not processed
        (the sender saw 0xA700, or Success for instances dropped); returns the series refused."""
        with self._idle:
            refused = self._refused.pop(id(assoc), {})
            ignored = self._ignored.pop(id(assoc), {})
        ae = printable(assoc.requestor.ae_title)
        for series_uid, count in refused.items():
            row = self.spool.series(series_uid)
            held = self.abort_hold_s > 0 and row is not None and row.state == "receiving" and row.interrupted
            log.warning(
                "association from AE '%s': %d instance(s) of series %s refused, out of resources (0xA700): %s",
                ae,
                count,
                printable(series_uid),
                f"held, not segmented (part of a series gives wrong volumes), until it is sent again whole "
                f"(it fails after {self.abort_hold_s:g} s quiet); make room (--max-spool-mb, --min-free-mb)"
                if held
                else "the sender must send them again once the spool has room (--max-spool-mb, --min-free-mb)",
            )
        stacks: dict[str, list[int]] = {}  # a stack's members sent again: one line per stack (240 for a per-file cine)
        parts = [0, 0]  # parts set aside with their files kept: they join their study's next stack
        for series_uid, (what, count) in list(ignored.items()):
            row = self.spool.series(series_uid) if what != "late" else None
            reason = "" if row is None else row.reason or ""
            if reason.startswith("stacked into "):
                stack = stacks.setdefault(reason.removeprefix("stacked into "), [0, 0])
                stack[0], stack[1] = stack[0] + 1, stack[1] + count
                del ignored[series_uid]
            elif reason.startswith(NOT_A_STACK) and self.spool.reopen_window_s > 0:
                parts[0], parts[1] = parts[0] + 1, parts[1] + count
                del ignored[series_uid]
        if parts[0]:
            log.info(
                "association from AE '%s': %d instance(s) of %d series held already, set aside as one or two slice "
                "positions each: kept for --reopen-window, they join a stack their study makes in that time",
                ae,
                parts[1],
                parts[0],
            )
        for stack_uid, (n_series, count) in stacks.items():
            log.warning(
                "association from AE '%s': %d instance(s) of %d series stacked into %s acknowledged but not processed: "
                "the stack was judged already and these SOP Instance UIDs are held (--status shows it); to have it "
                "judged again, send the cine as new series (new SeriesInstanceUIDs and SOP Instance UIDs)",
                ae,
                count,
                n_series,
                printable(stack_uid),
            )
        for series_uid, (what, count) in ignored.items():
            if what == "late":
                why = (
                    "it was judged and its instances are no longer kept (--reopen-window "
                    f"{self.spool.reopen_window_s:g} s): its verdict stands; to have it judged with them, send it "
                    "whole as a new series (new SeriesInstanceUID), or keep instances longer with --reopen-window"
                )
            else:
                why = (
                    f"it was {what.replace('_', ' ')} already and these SOP Instance UIDs are held: the same "
                    "series is processed once (--status shows it); to have it judged again, send it as a new "
                    "series (new SeriesInstanceUID and SOP Instance UIDs)"
                )
            log.warning(
                "association from AE '%s': %d instance(s) of series %s acknowledged but not processed: %s",
                ae,
                count,
                printable(series_uid),
                why,
            )
        return set(refused)

    def _on_store(self, event: Any) -> int:
        with self._idle:
            self._busy += 1
        try:
            return self._store(event)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _store(self, event: Any) -> int:
        received = received_file(event)
        try:
            return self._store_received(event, received)
        finally:
            if received is not None:  # refused, a duplicate, an error: no file left (moved when stored)
                received.discard()

    def _store_received(self, event: Any, received: ReceivedFile | None) -> int:
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        if received is not None and received.discarded:  # its connection closed before it was handled
            return STATUS_OUT_OF_RESOURCES
        try:
            if received is None:
                series_uid = str(event.dataset.get("SeriesInstanceUID", "") or "")
            else:  # the header only: the file is not read whole
                series_uid = str(read_header(received.path, ("SeriesInstanceUID",)).get("SeriesInstanceUID", "") or "")
        except Exception as exc:  # deferred decoding of a malformed data set
            if received is None or received.error is None:
                log.warning(
                    "C-STORE %s: data set cannot be decoded (%s): refused", printable(sop_uid), type(exc).__name__
                )
                return STATUS_CANNOT_UNDERSTAND
            series_uid = ""  # not written: refused below, for space
        if not series_uid and (received is None or received.error is None):
            log.warning("C-STORE %s: no SeriesInstanceUID (0020,000E): refused", printable(sop_uid))
            return STATUS_CANNOT_UNDERSTAND
        try:
            if received is not None and received.error is not None:
                raise received.error  # the data set could not be written as it arrived (a full disk)
            if received is not None and received.over_limit:
                outcome = "refused"
                log.warning(
                    "C-STORE %s of series %s from AE '%s' refused, out of resources (0xA700): %d bytes, over the "
                    "limit of %d bytes for one instance (--max-instance-mb)",
                    printable(sop_uid),
                    printable(series_uid),
                    printable(event.assoc.requestor.ae_title),
                    received.size,
                    received.limit,
                )
            else:
                outcome = self.spool.store_instance(
                    series_uid,
                    sop_uid,
                    event.encoded_dataset() if received is None else received.path,
                    calling_ae=str(event.assoc.requestor.ae_title),
                )
        except SpoolFull as exc:
            outcome = "refused"
            log.warning("C-STORE refused, out of resources (0xA700): %s", exc)
        except (OSError, sqlite3.Error) as exc:  # the spool's disk or queue went read-only or away
            outcome = "refused"
            log.error(
                "C-STORE %s refused, out of resources (0xA700): the spool %s cannot be written (%s: %s)",
                printable(sop_uid),
                self.spool.directory,
                type(exc).__name__,
                getattr(exc, "strerror", None) or exc,
            )
        if not series_uid:  # nothing to hold a series for: refused, counted
            with self._idle:
                self.counts["refused"] += 1
            return STATUS_OUT_OF_RESOURCES
        if outcome == "reused":
            log.warning(
                "C-STORE %s of series %s refused (0x0111 duplicate SOP instance): that SOP Instance UID was "
                "received before in another series (an anonymiser keeping SOP Instance UIDs?); send it with new ones",
                printable(sop_uid),
                printable(series_uid),
            )
        if outcome == "reopened":
            log.info(
                "series %s: a new instance after its verdict: reopened, to be judged again when quiet",
                printable(series_uid),
            )
        ignored = None
        if outcome == "late":
            ignored = "late"
        elif outcome == "duplicate":  # a judged series sent again (not the rest of a held or receiving one)
            state = self.spool.series_state(series_uid)
            ignored = state if state in FINAL_STATES or state == "forwarding" else None
        with self._idle:
            self.counts[outcome] += 1
            if outcome == "refused":
                per_series = self._refused.setdefault(id(event.assoc), {})
                per_series[series_uid] = per_series.get(series_uid, 0) + 1
                # a series cut short is held like an aborted one, not judged on part of it (unless
                # holds are off: a series all refused would be a row without instances, set aside);
                # marked with the refusal noted, so that no parallel release clears it in between
                try:
                    if self.abort_hold_s > 0:
                        self.spool.mark_refused(series_uid, calling_ae=str(event.assoc.requestor.ae_title))
                except sqlite3.Error:  # the queue cannot be written: the refusal is still answered and logged
                    pass
            if ignored:
                per_assoc = self._ignored.setdefault(id(event.assoc), {})
                per_assoc[series_uid] = (ignored, per_assoc.get(series_uid, (ignored, 0))[1] + 1)
            if outcome in ("stored", "reopened"):
                per_series = self._received.setdefault(id(event.assoc), {})
                per_series[series_uid] = per_series.get(series_uid, 0) + 1
            if outcome in ("stored", "reopened", "duplicate"):
                self._sent.setdefault(id(event.assoc), set()).add(series_uid)
        if outcome == "reused":
            return STATUS_DUPLICATE_SOP_INSTANCE
        return STATUS_OUT_OF_RESOURCES if outcome == "refused" else STATUS_SUCCESS
