"""Retrieval from a PACS: find a patient's or a study's MR series (C-FIND) and fetch them (C-GET
or C-MOVE).

The way in for cohort studies and for a reader at a workstation: the PACS is asked, not pushed
to. By C-GET (the default) it needs to know only this AE title: the images come back on the
association that asked. Many PACS offer only C-MOVE, which sends the images on an association
of their own to where they know this AE title listens: with ``move_port`` a Storage SCP listens
there for as long as the retrieval lasts. Each study lands whole in
``OUT/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` or not at all: it is
gathered in a hidden folder beside it and renamed when every instance has arrived. Objects of
the study that are not MR images (screen saves, reports, results of an earlier run) may come
with the series: they are accepted, so that the PACS counts them delivered, and discarded.

A retrieval works in two hidden folders of ``OUT`` that share a random suffix, removed when it
ends, however it ends but killed outright::

    .<StudyInstanceUID>.receiving-XXXXXXXX/   instances as they arrive, and owner.lock: held
                                              (flock) by the retrieval for as long as it runs
    .<StudyInstanceUID>.partial-XXXXXXXX/     the study as kept, renamed to OUT/<StudyInstanceUID>
                                              when complete

A retrieval killed outright (SIGKILL, the OOM killer, power loss) leaves them; the next one into
``OUT`` removes them (`_remove_stale_work`), never those of a retrieval still running.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CmrError, InputError, ReadError, WriteError
from ..study import STALE_AFTER_S
from .forward import Destination
from .scp import accepted_transfer_syntaxes, discard_unfinished, read_header, receive_into_files, received_file
from .spool import uid_file_name

__all__ = ["SeriesMatch", "find_series", "retrieve_study", "MR_STORAGE", "OTHER_STORAGE"]

#: SOP classes fetched: the short-axis cine's (classic, enhanced and legacy-converted MR images)
MR_STORAGE = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4")
_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
_GET = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve Information Model - MOVE
_PENDING = (0xFF00, 0xFF01)
#: other storage classes an MR study holds, labelled MR or not (screen saves, spectroscopy, reports,
#: segmentations, key objects, presentation states, PDFs): without a context for them the PACS
#: fails the sub-operation and with it the whole series; they are accepted and discarded
OTHER_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image (a scanner's "Screen Save")
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR Spectroscopy
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
)
_REFUSED = 0xA700  # C-STORE "out of resources": the retrieval was given up, nothing more is kept
_NO_SYNTAX_HINT = (
    "the PACS could not send an instance in a SOP class and transfer syntax offered: an object that is not "
    "an MR image, or one stored compressed in a syntax it cannot convert to one of those offered"
)


#: a retrieval's folders in OUT: the study's uid_file_name, "partial" (the study kept) or
#: "receiving" (instances arriving), and tempfile.mkdtemp's 8 characters, one suffix for both
_WORK_NAME = re.compile(r"^\.([A-Za-z0-9._]+)\.(partial|receiving)-([a-z0-9_]{8})$")
#: in a retrieval's receiving folder: the file it holds an flock on for as long as it runs
_OWNER = "owner.lock"


def _own(folder: Path) -> int:
    """Make ``folder`` this retrieval's: an flock on its `_OWNER` file, held by the returned
    descriptor until it is closed or the process ends, however it ends. The file is locked under
    another name and then renamed, so that `_remove_stale_work` never finds it unlocked."""
    claim = folder / f".{_OWNER}-{os.getpid()}"
    fd = os.open(claim, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(claim, folder / _OWNER)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_owned(folder: Path) -> None:
    """Remove ``folder``, its `_OWNER` file last: killed part-way, what is left is still known stale."""
    try:
        entries = [entry for entry in folder.iterdir() if entry.name != _OWNER]
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _stale(owned: Path, entry: Path) -> bool:
    """Whether ``entry`` (a retrieval's folder) was left by a retrieval that is gone: one whose
    receiving folder ``owned`` holds an `_OWNER` this call can lock (the kernel releases a lock
    when its process ends, however it ends), or, without one (0.14.6 and before; made this
    instant), ``entry`` older than `cmrsdk.study.STALE_AFTER_S`. A lock held, or a file that
    cannot be opened (another user's), is a retrieval to keep."""
    try:
        fd = os.open(owned / _OWNER, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            return time.time() - entry.stat().st_mtime >= STALE_AFTER_S
        except OSError:
            return False
    except OSError:
        return False
    try:  # no one locks it again once free: a retrieval never takes over another's folder
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # BlockingIOError: its retrieval runs
        return False
    finally:
        os.close(fd)


def _remove_stale_work(output: Path) -> list[str]:
    """Remove the folders retrievals into ``output`` killed outright (SIGKILL, the OOM killer,
    power loss) left there (`_stale`); returns their names. A study's partial folder is judged
    by its receiving folder's lock and removed first: that lock is the last thing to go."""
    try:
        found = [m for m in map(_WORK_NAME.match, sorted(e.name for e in output.iterdir())) if m is not None]
    except OSError:
        return []
    removed = []
    for kind in ("partial", "receiving"):
        for named in found:
            uid, this_kind, suffix = named.groups()
            entry = output / named.string
            if this_kind != kind or entry.is_symlink() or not entry.is_dir():
                continue
            if _stale(output / f".{uid}.receiving-{suffix}", entry):
                _remove_owned(entry)
                if not os.path.lexists(entry):
                    removed.append(entry.name)
    return removed


def _get_contexts(syntaxes: list[str]) -> list[tuple[str, list[str]]]:
    """The storage presentation contexts a C-GET proposes: one per (SOP class, transfer syntax)
    for MR and Secondary Capture images, so that the PACS sends each instance as it stores it
    (Orthanc, offered one context holding every syntax, accepts one uncompressed syntax and must
    then transcode, which it cannot do from JPEG 2000); one context each for the other classes,
    which are discarded. pynetdicom proposes at most 128: with the 8 syntaxes the node accepts at
    most (3 uncompressed, 5 lossless), 4 x 8 + 14 here and 3 for C-FIND, C-GET and C-MOVE = 49."""
    per_syntax = [*MR_STORAGE, OTHER_STORAGE[0]]
    contexts = [(sop_class, [syntax]) for sop_class in per_syntax for syntax in syntaxes]
    return contexts + [(sop_class, syntaxes) for sop_class in OTHER_STORAGE[1:]]


@dataclass(frozen=True)
class SeriesMatch:
    """One MR series a PACS holds, as its C-FIND answered."""

    study_uid: str
    series_uid: str
    patient_id: str
    study_date: str
    series_number: str
    description: str
    n_instances: int | None


def _peer_error(peer: Destination, message: str) -> ReadError:
    return ReadError(f"PACS {peer}", message)


class _Association:
    """One association with the PACS: Find, Get, and MR storage in the SCP role (for C-GET); over
    TLS with ``tls`` (:func:`cmrsdk.serve.scp.client_tls_context`)."""

    def __init__(
        self,
        peer: Destination,
        ae_title: str,
        timeout_s: float,
        on_store: Callable[[Any], int],
        tls: ssl.SSLContext | None = None,
        receive_dir: Path | None = None,
    ) -> None:
        from pynetdicom import AE, build_role, evt

        ae = AE(ae_title=ae_title)
        if receive_dir is not None:  # instances are written there as they arrive, not held in memory
            receive_into_files(ae, receive_dir)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        ae.add_requested_context(_FIND)
        ae.add_requested_context(_GET)
        ae.add_requested_context(_MOVE)
        for sop_class, syntaxes in _get_contexts(accepted_transfer_syntaxes()):
            ae.add_requested_context(sop_class, syntaxes)
        roles = [build_role(sop_class, scp_role=True) for sop_class in (*MR_STORAGE, *OTHER_STORAGE)]
        self.peer, self.ae_title = peer, ae_title
        self.assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_CLOSE, discard_unfinished)],
            tls_args=(tls, peer.host) if tls else None,
        )
        if not self.assoc.is_established:
            raise _peer_error(
                peer,
                f"association refused or not answered (is a PACS listening at {peer.host}:{peer.port} with AE "
                f"title '{peer.ae_title}'? it answers only calling AE titles it knows: register '{ae_title}' "
                "there, with C-FIND and C-GET allowed"
                + (
                    "; over TLS, its certificate must be signed by --tls-ca and name the host, and it may want "
                    "this side's (--tls-cert, --tls-key))"
                    if tls
                    else ")"
                ),
            )

    def _require(self, abstract_syntax: str, service: str, instead: str) -> None:
        """One error line where the PACS did not accept ``service`` (pynetdicom raises ValueError)."""
        if not any(cx.abstract_syntax == abstract_syntax and cx.as_scu for cx in self.assoc.accepted_contexts):
            raise _peer_error(self.peer, f"does not offer {service}: {instead}")

    def find(self, query: Any) -> Iterator[Any]:
        self._require(
            _FIND,
            "C-FIND in the Study Root model",
            "it cannot be asked for studies and series this way (ask its administrator to allow "
            f"Study Root C-FIND for '{self.ae_title}')",
        )
        for status, identifier in self.assoc.send_c_find(query, _FIND):
            code = int(status.Status) if status and "Status" in status else None
            if code in _PENDING:
                yield identifier
            elif code != 0x0000:
                text = self._no_answer() if code is None else f"status 0x{code:04X}"
                raise _peer_error(self.peer, f"C-FIND at {query.QueryRetrieveLevel} level failed: {text}")

    def get(self, query: Any, move_to: str | None = None) -> Any:
        """The final response of a C-GET, or of a C-MOVE to AE title ``move_to``; raises on failure."""
        if move_to is None:
            self._require(
                _GET,
                "C-GET",
                "fetch by C-MOVE with --move-port PORT (a port of this host where the PACS knows "
                f"'{self.ae_title}' to listen)",
            )
        else:
            self._require(_MOVE, "C-MOVE", "fetch by C-GET (without --move-port)")
        responses = (
            self.assoc.send_c_get(query, _GET) if move_to is None else self.assoc.send_c_move(query, move_to, _MOVE)
        )
        final = None
        for status, _ in responses:
            if status and "Status" in status:
                final = status
        code = int(final.Status) if final is not None else None
        if code not in (0x0000, 0xB000):
            text = self._no_answer() if code is None else f"status 0x{code:04X}"
            if code == 0xA801:  # PS3.4 C.4.2.1.5: move destination unknown
                text += (
                    f" (the PACS does not know where '{move_to}' listens: register it there with this host and port)"
                )
            elif code == 0xC000:  # Orthanc's answer when sub-operations failed: the likely causes
                text += (
                    f" ({_NO_SYNTAX_HINT})"
                    if move_to is None
                    else f" (the PACS could not deliver to '{move_to}': nothing listens where it knows it to be, or "
                    f"it {_NO_SYNTAX_HINT.removeprefix('the PACS ')})"
                )
            verb = "C-GET" if move_to is None else f"C-MOVE to {move_to}"
            raise _peer_error(self.peer, f"{verb} of series {query.SeriesInstanceUID} failed: {text}")
        return final

    def _no_answer(self) -> str:
        return (
            f"no answer (timeout, or aborted: a PACS drops queries from AE titles it does not know; "
            f"is '{self.ae_title}' registered there with C-FIND and C-GET allowed?)"
        )

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def abort(self) -> None:
        """Drop the association at once: a release would wait for the PACS to finish the C-GET or
        C-MOVE in progress, up to the timeout."""
        if self.assoc.is_established:
            self.assoc.abort()


def _query(level: str, **keys: str) -> Any:
    from pydicom import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find_series(
    peer: Destination,
    *,
    study_uid: str | None = None,
    patient_id: str | None = None,
    accession: str | None = None,
    ae_title: str = "CMRSDK",
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> list[SeriesMatch]:
    """The MR series of the studies matching ``study_uid``, ``patient_id`` and ``accession``.

    Two C-FIND levels, as the Study Root model asks: the studies, then each study's series with
    Modality MR. Returns them sorted by study date, study and series number.

    Raises
    ------
    InputError : no key given.
    ReadError : the PACS refused the association or a query, naming the PACS and the status.
    """
    keys = {"StudyInstanceUID": study_uid, "PatientID": patient_id, "AccessionNumber": accession}
    if not any(keys.values()):
        raise InputError("retrieve needs --study, --patient or --accession (what to ask the PACS for)")
    link = _Association(peer, ae_title, timeout_s, lambda event: 0xC000, tls)
    try:
        studies = list(
            link.find(
                _query(
                    "STUDY",
                    StudyInstanceUID=study_uid or "",
                    PatientID=patient_id or "",
                    AccessionNumber=accession or "",
                    StudyDate="",
                )
            )
        )
        matches = []
        for study in studies:
            uid = str(study.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            for series in link.find(
                _query(
                    "SERIES",
                    StudyInstanceUID=uid,
                    SeriesInstanceUID="",
                    Modality="MR",
                    SeriesNumber="",
                    SeriesDescription="",
                    NumberOfSeriesRelatedInstances="",
                )
            ):
                if str(series.get("Modality", "MR") or "MR").upper() != "MR":  # a PACS that ignores the key
                    continue
                count = str(series.get("NumberOfSeriesRelatedInstances", "") or "")
                matches.append(
                    SeriesMatch(
                        study_uid=uid,
                        series_uid=str(series.SeriesInstanceUID),
                        patient_id=str(study.get("PatientID", "") or ""),
                        study_date=str(study.get("StudyDate", "") or ""),
                        series_number=str(series.get("SeriesNumber", "") or ""),
                        description=str(series.get("SeriesDescription", "") or ""),
                        n_instances=int(count) if count.isdigit() else None,
                    )
                )
    finally:
        link.close()

    def order(m: SeriesMatch) -> tuple[str, str, int, str]:
        number = m.series_number.strip()
        return (m.study_date, m.study_uid, int(number) if number.lstrip("-").isdigit() else 0, m.series_uid)

    return sorted(matches, key=order)


def retrieve_study(
    peer: Destination,
    series: list[SeriesMatch],
    output: str | Path,
    *,
    ae_title: str = "CMRSDK",
    timeout_s: float = 60.0,
    progress: Callable[[int], None] | None = None,
    move_port: int | None = None,
    move_host: str = "0.0.0.0",
    tls: ssl.SSLContext | None = None,
    move_tls: ssl.SSLContext | None = None,
    note: Callable[[str], None] | None = None,
) -> Path:
    """Fetch ``series`` (all of one study) by C-GET into ``output/<StudyInstanceUID>/``, or by
    C-MOVE with ``move_port``: a Storage SCP with AE title ``ae_title`` listens on
    ``move_host:move_port`` meanwhile, where the PACS must know ``ae_title`` to be. With ``tls``
    the associations this side opens are TLS; with ``move_tls`` (a server context,
    :func:`cmrsdk.serve.scp.tls_context`) so is the one the PACS opens to deliver a C-MOVE.

    The instances are written to a hidden folder beside it as they arrive, each
    ``<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` with its file meta (each UID named by
    :func:`cmrsdk.serve.spool.uid_file_name`: a PACS's ``..`` is no way out of the folder, two
    UIDs never share a name), and the folder renamed when every series has arrived complete; a failure or an interrupt leaves nothing.
    What retrievals into ``output`` killed outright left there is removed first (one ``note``
    line names it), never what a retrieval still running holds. Instances
    that are not MR images (:data:`OTHER_STORAGE`: screen saves, reports...) are accepted and
    discarded, and ``note`` is called with one line saying so. ``progress`` is called with 1 for
    each instance stored.

    Returns
    -------
    The study folder (``cmrsdk segment`` reads it: the short-axis cine is chosen among its series).

    Raises
    ------
    InputError : series of several studies, or none; the study folder exists (fetched before, or
        by another retrieval at the same time); ``output`` cannot be a folder.
    ReadError : an association, C-GET or sub-operation failure, naming the PACS, the series
        and the count of instances that did not arrive.
    """
    studies = {m.study_uid for m in series}
    if len(studies) != 1:
        raise InputError(f"retrieve_study takes the series of one study, got {len(studies)} studies")
    study_uid = studies.pop()
    output = Path(output)
    target = output / uid_file_name(study_uid)
    cleared = _remove_stale_work(output)
    if cleared and note is not None:
        shown = ", ".join(cleared[:4]) + (f" and {len(cleared) - 4} more" if len(cleared) > 4 else "")
        plural = "s" if len(cleared) != 1 else ""
        note(f"{output}: removed {len(cleared)} folder{plural} left by a retrieval killed outright: {shown}")
    if target.exists():
        raise _exists(target)
    try:
        output.mkdir(parents=True, exist_ok=True)
        # where each instance is written as it arrives (the same disk: renamed into the staging
        # folder when kept), removed at the end whatever happens; unique per call, not per
        # process: two retrievals in one process do not share it
        incoming = Path(tempfile.mkdtemp(prefix=f".{uid_file_name(study_uid)}.receiving-", dir=output))
    except OSError as exc:
        raise InputError(f"output folder '{output}' cannot be used: {exc.strerror or exc}") from exc
    owner: int | None = None
    try:  # owned before the staging folder exists, released after it is gone (renamed or removed)
        owner = _own(incoming)
        staging = output / incoming.name.replace(".receiving-", ".partial-", 1)
        staging.mkdir()
    except BaseException as exc:  # an interrupt here too: nothing is left
        _remove_owned(incoming)
        if owner is not None:
            os.close(owner)
        if isinstance(exc, OSError):
            raise InputError(f"output folder '{output}' cannot be used: {exc.strerror or exc}") from exc
        raise
    lock = threading.Lock()
    stopped = threading.Event()  # set, under the lock, before the staging folder is removed
    refused: list[str] = []
    skipped: Counter[str] = Counter()

    def on_store(event: Any) -> int:
        received = received_file(event)
        try:
            return store(event, received)
        finally:
            if received is not None:  # refused or skipped: no file left (moved when kept)
                received.discard()

    def store(event: Any, received: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class not in MR_STORAGE:
            skipped[sop_class] += 1
            return 0x0000  # delivered as far as the PACS is concerned: it fails nothing for it
        try:
            if received is None:
                ds = event.dataset
                ds.file_meta = event.file_meta
            elif received.error is not None:  # it could not be written as it arrived (a full disk)
                raise received.error
            else:  # the header only: the file is renamed into place, never read whole
                ds = read_header(received.path, ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
            if str(ds.get("StudyInstanceUID", "")) != study_uid:
                refused.append(str(event.request.AffectedSOPInstanceUID))
                return 0xA900  # not of the study asked for
            folder = staging / uid_file_name(str(ds.SeriesInstanceUID))
            # a store after the retrieval was given up (the PACS still delivering) would
            # recreate the folder the clean-up removed: refused under the same lock
            with lock:
                if stopped.is_set():
                    return _REFUSED
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{uid_file_name(str(ds.SOPInstanceUID))}.dcm"
                if received is None:
                    ds.save_as(path, enforce_file_format=True)
                else:  # as sent, with the file meta of its presentation context
                    os.replace(received.path, path)
        except Exception as exc:  # a data set that cannot be decoded or written: counted as failed
            refused.append(f"{event.request.AffectedSOPInstanceUID} ({type(exc).__name__})")
            return 0xC000
        if progress is not None:
            progress(1)
        return 0x0000

    server = None
    link: _Association | None = None
    try:
        if move_port is not None:
            server = _listen(ae_title, move_host, move_port, timeout_s, on_store, move_tls, receive_dir=incoming)
        link = _Association(peer, ae_title, timeout_s, on_store, tls, receive_dir=incoming)
        for match in series:
            final = link.get(
                _query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=match.series_uid),
                move_to=ae_title if server is not None else None,
            )
            failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
            if failed or refused:
                raise _peer_error(
                    peer,
                    f"C-GET of series {match.series_uid}: {failed} instance(s) not delivered"
                    + (f" ({_NO_SYNTAX_HINT})" if failed else "")
                    + (f"; refused here: {', '.join(refused[:3])}" if refused else ""),
                )
        if not any(staging.iterdir()):
            raise _peer_error(
                peer,
                f"C-GET of study {study_uid} delivered no MR image"
                + (f" ({_describe(skipped)}, not kept)" if skipped else ""),
            )
        try:
            staging.rename(target)
        except OSError as exc:
            if target.exists():  # another retrieval of the study into the same folder finished first
                raise _exists(target) from exc
            raise WriteError(f"{target}: cannot be written ({exc.strerror or exc})") from exc
    except BaseException as exc:
        with lock:
            stopped.set()
        if not isinstance(exc, CmrError):  # an interrupt: stop the PACS sending, at once
            if link is not None:
                link.abort()
            if server is not None:
                for association in server.active_associations:
                    association.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if link is not None:
            link.close()
        if server is not None:
            server.shutdown()
        _remove_owned(incoming)
        os.close(owner)  # after: what could not be removed is stale from here on
    if skipped and note is not None:
        note(f"{target}: {_describe(skipped)} skipped (not MR images)")
    return target


def _exists(target: Path) -> InputError:
    return InputError(f"{target} exists: the study was retrieved before (remove it to fetch it again)")


def _describe(skipped: Counter[str]) -> str:
    """``3 instances (2 Secondary Capture Image Storage, 1 Comprehensive SR Storage)``."""
    from pydicom.uid import UID

    total = sum(skipped.values())
    kinds = ", ".join(f"{n} {UID(uid).name}" for uid, n in skipped.most_common())
    return f"{total} instance{'s' if total != 1 else ''} ({kinds})"


def _listen(
    ae_title: str,
    host: str,
    port: int,
    timeout_s: float,
    on_store: Callable[[Any], int],
    tls: ssl.SSLContext | None = None,
    receive_dir: Path | None = None,
) -> Any:
    """A Storage SCP for MR images on ``host:port`` (C-MOVE's destination), over TLS with ``tls``,
    running until shut down; with ``receive_dir``, instances are written there as they arrive."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, evt

    ae = AE(ae_title=ae_title)
    if receive_dir is not None:
        receive_into_files(ae, receive_dir)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    syntaxes = accepted_transfer_syntaxes()
    for sop_class in MR_STORAGE:
        ae.add_supported_context(sop_class, syntaxes)
    for sop_class in OTHER_STORAGE:  # discarded on arrival: any syntax, none is decoded
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    try:
        handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_CLOSE, discard_unfinished)]
        return ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=tls)
    except OSError as exc:
        raise InputError(f"--move-port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
