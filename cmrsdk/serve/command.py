"""The ``cmrsdk serve`` command line: options, logging, ``--status``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import ssl
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from ..engines import BACKENDS
from ..errors import BackendUnavailableError, CmrError, InputError

__all__ = ["add_serve_parser", "run_serve", "add_retrieve_parser", "run_retrieve"]


class _OutageFilter(logging.Filter):
    """Drops pynetdicom's lines for a peer that cannot be reached (and the TLS traceback after them)."""

    PREFIXES = ("Association request failed", "TCP Initialisation Error")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.funcName == "connect":  # LOGGER.exception(exc) of a TLS failure
            return False
        return not str(record.msg).startswith(self.PREFIXES)


_OUTAGE_LINES = _OutageFilter()


class _OneLineFormatter(logging.Formatter):
    """Each record one line: a control character in a message is written escaped (``\\n``,
    ``\\x1b``). The node quotes the UIDs and AE titles it logs itself (`spool.printable`);
    this also covers pynetdicom's and pydicom's lines, which quote none (``--log-level DEBUG``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if line.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def add_serve_parser(sub: argparse._SubParsersAction, default_bundle: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="DICOM node: receive series by C-STORE, segment them, send SEG and SR back",
        description="Storage SCP (and C-ECHO). A series is complete after --series-timeout seconds without a new "
        "instance; short-axis cines are segmented one at a time, results written under --output and, "
        "with --forward, sent by C-STORE. The queue lives in the spool: after a crash, restart with the "
        "same --spool and everything received is finished and delivered once. Transfer syntaxes accepted: "
        "implicit and explicit VR little endian, explicit VR big endian, and JPEG Lossless, JPEG-LS Lossless, "
        "JPEG 2000 Lossless and RLE where their decoders are installed; not deflated (a few MB of it inflate "
        "to gigabytes: senders fall back to an uncompressed syntax) nor lossy.",
    )
    p.add_argument("--status", metavar="SPOOL", help="print the queue of the spool SPOOL and exit")
    p.add_argument("--port", type=int, help="TCP port to listen on (104 and 11112 are the usual DICOM ports)")
    p.add_argument("--spool", help="spool directory: received instances and the queue (SQLite)")
    p.add_argument(
        "--output",
        help="results folder: one sub-folder per series, named by its SeriesInstanceUID (a UID that is not a "
        "safe file name is shortened, its characters other than letters, digits and dots made '_', and a hash "
        "of it appended: _h and 12 hex digits)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--aet", default="CMRSDK", help="this node's AE title (default: CMRSDK)")
    p.add_argument(
        "--series-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a series is complete after this many seconds without a new instance (default: 10)",
    )
    p.add_argument(
        "--reopen-window",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="keep a series' instances this long after its result or verdict: new instances of it in that time "
        "(a transfer cut off and resent) have it judged again with all of them, results in OUT/<UID>_2/ "
        "(default: 600; 0: delete at once, later instances are recorded as late)",
    )
    p.add_argument(
        "--abort-hold",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a series whose sender aborted the transfer is held, not segmented, until it is sent again; after "
        "this many seconds quiet it fails unsegmented (default: 600; 0: judge it on what arrived)",
    )
    p.add_argument("--forward", metavar="AET@HOST:PORT", help="send the result DICOM files (SEG, SR) to this AE")
    p.add_argument(
        "--forward-attempts",
        type=int,
        default=10,
        metavar="N",
        help="a result file the --forward peer refuses for good (it stores no such object) is tried N times, "
        "then left in the results folder and logged as not forwarded (default: 10; network failures are "
        "retried for as long as the node runs)",
    )
    p.add_argument(
        "--forward-tls-ca",
        metavar="PEM",
        help="forward over TLS: the peer's certificate must be signed by this CA and name its HOST",
    )
    p.add_argument(
        "--forward-tls-cert", metavar="PEM", help="with --forward-tls-ca: this node's certificate (mutual TLS)"
    )
    p.add_argument("--forward-tls-key", metavar="PEM", help="private key (PEM) of --forward-tls-cert")
    p.add_argument("--allow", nargs="+", default=[], metavar="AET", help="calling AE titles accepted (default: any)")
    p.add_argument("--bundle", default=default_bundle, help="model bundle directory (default: the demo bundle)")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tls-cert", help="TLS certificate (PEM): associations must use TLS")
    p.add_argument("--tls-key", help="TLS private key (PEM) of --tls-cert")
    p.add_argument("--tls-ca", help="CA certificate (PEM): callers must present a certificate it signed")
    p.add_argument("--max-associations", type=int, default=8, help="associations at once (default: 8)")
    p.add_argument("--max-pdu", type=int, default=65536, help="largest PDU received, bytes (default: 65536; 0: any)")
    p.add_argument(
        "--max-spool-mb",
        type=float,
        default=None,
        help="refuse instances (status 0xA700) once the spool holds this many MB (default: no limit)",
    )
    p.add_argument(
        "--max-instance-mb",
        type=float,
        default=2048.0,
        help="refuse larger instances (status 0xA700; each is written to the spool's disk as it arrives, "
        "bytes past this are not) (default: 2048; 0: no limit)",
    )
    p.add_argument(
        "--min-free-mb",
        type=float,
        default=512.0,
        help="refuse instances (status 0xA700) when the spool's disk has less free (default: 512)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _check_ae_title(aet: str) -> None:
    if not 0 < len(aet.strip()) <= 16 or "\\" in aet:
        raise InputError(f"AE title '{aet}' is invalid; expected 1 to 16 characters without backslash")


def _check(args: argparse.Namespace) -> None:
    missing = [name for name in ("port", "spool", "output") if getattr(args, name) is None]
    if missing:
        raise InputError(f"serve needs {', '.join('--' + m for m in missing)} (or --status SPOOL)")
    if not 0 <= args.port < 65536:
        raise InputError(f"--port value {args.port} is invalid; expected 0 to 65535")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError(
            f"--tls-cert and --tls-key go together; got only {'--tls-cert' if args.tls_cert else '--tls-key'}"
        )
    if args.tls_ca and not args.tls_cert:
        raise InputError("--tls-ca needs --tls-cert and --tls-key")
    if args.series_timeout <= 0:
        raise InputError(f"--series-timeout value {args.series_timeout} is invalid; expected seconds > 0")
    if (args.forward_tls_ca or args.forward_tls_cert or args.forward_tls_key) and not args.forward:
        raise InputError("--forward-tls-ca, --forward-tls-cert and --forward-tls-key need --forward")
    _check_client_tls(args.forward_tls_ca, args.forward_tls_cert, args.forward_tls_key, "--forward-tls")
    for option in ("tls_cert", "tls_key", "tls_ca"):
        value = getattr(args, option)
        if value and not Path(value).is_file():
            raise InputError(f"--{option.replace('_', '-')} file '{value}' not found")
    if not args.reopen_window >= 0:
        raise InputError(f"--reopen-window value {args.reopen_window} is invalid; expected seconds >= 0")
    if args.forward_attempts < 1:
        raise InputError(f"--forward-attempts value {args.forward_attempts} is invalid; expected a count >= 1")
    if not args.abort_hold >= 0:
        raise InputError(f"--abort-hold value {args.abort_hold} is invalid; expected seconds >= 0")
    if args.max_associations < 1:
        raise InputError(f"--max-associations value {args.max_associations} is invalid; expected 1 or more")
    if args.max_spool_mb is not None and args.max_spool_mb <= 0:
        raise InputError(f"--max-spool-mb value {args.max_spool_mb} is invalid; expected MB > 0")
    if not args.max_instance_mb >= 0:
        raise InputError(f"--max-instance-mb value {args.max_instance_mb} is invalid; expected MB > 0 (0: no limit)")
    for aet in [args.aet, *args.allow]:
        _check_ae_title(aet)


def _check_client_tls(ca: str | None, cert: str | None, key: str | None, prefix: str) -> None:
    """A client's TLS options: a certificate and key together, only with the CA, each file there."""
    if (cert or key) and not ca:
        raise InputError(
            f"{prefix}-cert and {prefix}-key need {prefix}-ca (the CA the peer's certificate is checked against)"
        )
    if bool(cert) != bool(key):
        raise InputError(f"{prefix}-cert and {prefix}-key go together; got only {prefix}-{'cert' if cert else 'key'}")
    for name, value in (("ca", ca), ("cert", cert), ("key", key)):
        if value and not Path(value).is_file():
            raise InputError(f"{prefix}-{name} file '{value}' not found")


#: what a PEM file of each kind holds: a certificate (or a CA's), a private key
_PEM_MARKERS = {"certificate": "-----BEGIN CERTIFICATE-----", "private key": "PRIVATE KEY-----"}


def _pem_holds(path: str, kind: str) -> bool:
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode("ascii", errors="replace")
    except OSError:
        return False
    return _PEM_MARKERS[kind] in text


def _tls(build: Callable[[], ssl.SSLContext], files: tuple[tuple[str, str | None, str], ...]) -> ssl.SSLContext:
    """A TLS context from PEM files, or one clear error naming the option and file at fault (not
    OpenSSL's traceback). ``files``: (option, path or None where not given, "certificate" or
    "private key")."""
    try:
        return build()
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        given = [(option, path, kind) for option, path, kind in files if path]
        bad = [f"{option} '{path}' is not a PEM {kind}" for option, path, kind in given if not _pem_holds(path, kind)]
        if bad:
            raise InputError(f"TLS: {'; '.join(bad)}") from exc
        raise InputError(
            f"TLS files given by {', '.join(option for option, _, _ in given)} cannot be used: {reason} "
            "(PEM certificate and matching private key expected)"
        ) from exc


def run_serve(args: argparse.Namespace, pipeline: dict[str, Any] | None = None) -> int:
    """Run ``cmrsdk serve`` (or print its spool's status with --status). ``pipeline``: `Pipeline`'s
    keyword arguments besides bundle, backend and device (mode, threads, mirroring, ...)."""
    from .spool import format_status, read_status

    if args.status:
        rows, deliveries = read_status(args.status)
        for line in format_status(rows, deliveries):
            print(line)
        return 0
    _check(args)
    # what the node's worker would otherwise find only after the node listens, ending it with a raw
    # exception: an output folder that cannot be made, a bundle that cannot be loaded
    _check_output_folder(Path(args.output).expanduser(), "--output")
    from ..bundle import load_bundle

    load_bundle(args.bundle)  # reads and verifies the manifest and artifacts; builds no engine
    try:
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError("cmrsdk serve needs pynetdicom: pip install 'cmrsdk[serve]'") from exc
    from .forward import parse_destination
    from .node import Node, NodeConfig
    from .scp import ScpOptions, client_tls_context, tls_context

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(asctime)s cmrsdk serve %(levelname)s %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler])
    # pynetdicom logs every association and non-conformant UID, pydicom every vendor quirk in a header,
    # highdicom every copied module: the node's log is one line per series and what needs a person.
    # pydicom logs a frame it cannot decode as an ERROR with its traceback before it raises: the
    # series' failure line gives the reason, so only its CRITICAL lines pass
    # pynetdicom's connection failures repeat, each forwarding attempt, what the node's own back-off
    # line says once (a PACS outage flooded the log): they pass with --log-level DEBUG only. Its other
    # ERROR lines pass: an exception in the node's C-STORE handler is answered 0xC211 and said only there
    debug = args.log_level == "DEBUG"
    for noisy, level in (
        ("pynetdicom", logging.DEBUG if debug else logging.ERROR),
        ("pydicom", logging.CRITICAL),
        ("highdicom", logging.ERROR),
    ):
        logging.getLogger(noisy).setLevel(level)
    transport = logging.getLogger("pynetdicom.transport")  # a logger's filter sees only its own records
    (transport.removeFilter if debug else transport.addFilter)(_OUTAGE_LINES)
    warnings.filterwarnings("ignore", module=r"(pydicom|highdicom|pynetdicom)(\..*)?$")
    ssl_context = (
        _tls(
            lambda: tls_context(args.tls_cert, args.tls_key, args.tls_ca),
            (
                ("--tls-cert", args.tls_cert, "certificate"),
                ("--tls-key", args.tls_key, "private key"),
                ("--tls-ca", args.tls_ca, "certificate"),
            ),
        )
        if args.tls_cert
        else None
    )
    forward_tls = (
        _tls(
            lambda: client_tls_context(args.forward_tls_ca, args.forward_tls_cert, args.forward_tls_key),
            (
                ("--forward-tls-ca", args.forward_tls_ca, "certificate"),
                ("--forward-tls-cert", args.forward_tls_cert, "certificate"),
                ("--forward-tls-key", args.forward_tls_key, "private key"),
            ),
        )
        if args.forward_tls_ca
        else None
    )
    scp = ScpOptions(
        host=args.host,
        port=args.port,
        ae_title=args.aet.strip(),
        allow=tuple(a.strip() for a in args.allow),
        max_associations=args.max_associations,
        max_pdu=args.max_pdu,
        max_instance_bytes=int(args.max_instance_mb * 2**20) if args.max_instance_mb else None,
        ssl_context=ssl_context,
    )
    config = NodeConfig(
        # absolute: result files are recorded by path, and a restart from another folder must find them
        spool=Path(args.spool).expanduser().resolve(),
        output=Path(args.output).expanduser().resolve(),
        scp=scp,
        series_timeout_s=args.series_timeout,
        reopen_window_s=args.reopen_window,
        abort_hold_s=args.abort_hold,
        forward_attempts=args.forward_attempts,
        forward=parse_destination(args.forward) if args.forward else None,
        bundle=args.bundle,
        device=args.device,
        backend=args.backend,
        max_spool_bytes=int(args.max_spool_mb * 2**20) if args.max_spool_mb else None,
        min_free_bytes=int(args.min_free_mb * 2**20),
        forward_tls=forward_tls,
        pipeline=dict(pipeline or {}),
    )
    node = Node(config)
    node.install_signal_handlers()
    node.start()
    return node.wait()


def add_retrieve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "retrieve",
        help="fetch a patient's or a study's MR series from a PACS (C-FIND; C-GET or C-MOVE) for `cmrsdk segment`",
        description="Asks the PACS for the studies matching --study, --patient or --accession and fetches their "
        "MR series by C-GET (or C-MOVE with --move-port) into OUT/<StudyInstanceUID>/ (each study whole or not "
        "at all), ready for `cmrsdk segment OUT/<StudyInstanceUID>`. The PACS must know this AE title (--aet) "
        "with C-FIND and C-GET allowed, or, for C-MOVE, at this host and --move-port.",
    )
    p.add_argument("pacs", metavar="AET@HOST:PORT", help="the PACS, e.g. ORTHANC@pacs.local:4242")
    p.add_argument("--study", help="StudyInstanceUID")
    p.add_argument("--patient", help="PatientID (every study of the patient)")
    p.add_argument("--accession", help="AccessionNumber")
    p.add_argument("-o", "--output", help="folder for the studies (not needed with --list)")
    p.add_argument("--list", action="store_true", help="list the matching MR series and fetch nothing")
    p.add_argument("--aet", default="CMRSDK", help="this side's AE title (default: CMRSDK)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the PACS per message (default 60)")
    p.add_argument(
        "--move-port",
        type=int,
        metavar="PORT",
        help="fetch by C-MOVE (for a PACS without C-GET): listen on PORT meanwhile, where the PACS must know "
        "--aet to be (this host, PORT)",
    )
    p.add_argument("--move-host", default="0.0.0.0", help="address to listen on with --move-port (default: all)")
    p.add_argument(
        "--tls-ca", metavar="PEM", help="TLS: the PACS's certificate must be signed by this CA and name its HOST"
    )
    p.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="with --tls-ca: this side's certificate (mutual TLS; with --move-port also the one the PACS "
        "must trust when it delivers, over TLS, and it must present one --tls-ca signed)",
    )
    p.add_argument("--tls-key", metavar="PEM", help="private key (PEM) of --tls-cert")
    return p


def _check_output_folder(output: Path, option: str = "-o") -> None:
    """``option``'s folder must be a folder or a path where one can be made: refused before the PACS
    is asked (retrieve) or the node listens (serve)."""
    for folder in (output, *output.parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"{option} value '{output}' is invalid: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(
                    f"{option} value '{output}' is invalid: {folder} cannot be written (permission denied)"
                )
            return


def _retrieve_tls_files(args: argparse.Namespace) -> tuple[tuple[str, str | None, str], ...]:
    return (
        ("--tls-ca", args.tls_ca, "certificate"),
        ("--tls-cert", args.tls_cert, "certificate"),
        ("--tls-key", args.tls_key, "private key"),
    )


def run_retrieve(args: argparse.Namespace) -> int:
    from .forward import parse_destination
    from .scp import client_tls_context, tls_context

    peer = parse_destination(args.pacs, "PACS")
    if not args.list and not args.output:
        raise InputError("retrieve needs -o OUTPUT (or --list)")
    _check_ae_title(args.aet)
    if not (math.isfinite(args.timeout) and args.timeout > 0):  # 0 would time out every message at once
        raise InputError(f"--timeout value {args.timeout} is invalid; expected seconds > 0")
    if not args.list:
        _check_output_folder(Path(args.output))
    if args.move_port is not None and not 0 < args.move_port < 65536:
        raise InputError(f"--move-port value {args.move_port} is invalid; expected 1 to 65535")
    _check_client_tls(args.tls_ca, args.tls_cert, args.tls_key, "--tls")
    if args.tls_ca and args.move_port is not None and not args.tls_cert:
        raise InputError(
            "--move-port over TLS needs --tls-cert and --tls-key: the PACS opens the delivering "
            "association to this side, which must present a certificate"
        )
    tls = (
        _tls(lambda: client_tls_context(args.tls_ca, args.tls_cert, args.tls_key), _retrieve_tls_files(args))
        if args.tls_ca
        else None
    )
    # C-MOVE's delivery over TLS too: this side is the server, and the PACS must present a
    # certificate the same CA signed (mutual TLS, PS3.15 B.1)
    move_tls = (
        _tls(lambda: tls_context(args.tls_cert, args.tls_key, args.tls_ca), _retrieve_tls_files(args))
        if args.tls_ca and args.move_port is not None
        else None
    )
    try:
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError("cmrsdk retrieve needs pynetdicom: pip install 'cmrsdk[serve]'") from exc
    from .retrieve import find_series, retrieve_study
    from .spool import printable

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own lines for every association
    # pydicom warns for each non-conformant UID of each instance stored (a GE cine: one per image):
    # they are stored as sent, and `cmrsdk segment` says what matters in them
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    aet = args.aet.strip()
    matches = find_series(
        peer,
        study_uid=args.study,
        patient_id=args.patient,
        accession=args.accession,
        ae_title=aet,
        timeout_s=args.timeout,
        tls=tls,
    )
    if not matches:
        print(f"{peer}: no MR series matches", file=sys.stderr)
        return 1
    studies: dict[str, list] = {}
    for m in matches:
        studies.setdefault(m.study_uid, []).append(m)
    if args.list:
        for uid, series in studies.items():  # the PACS's text: quoted where it would not print as it is
            first = series[0]
            print(
                f"study {printable(uid)} (patient {printable(first.patient_id or '?')}, "
                f"{printable(first.study_date or 'no date')})"
            )
            for m in series:
                count = "?" if m.n_instances is None else m.n_instances
                number, description = printable(m.series_number or "-"), printable(m.description or "-")
                print(f"  series {number:>4} {count:>5} images  {description}  {printable(m.series_uid)}")
        return 0
    from tqdm import tqdm

    failures = 0
    for uid, series in studies.items():
        known = [m.n_instances for m in series]
        total = None if None in known else sum(n for n in known if n is not None)
        with tqdm(
            total=total, unit="image", desc=f"study {printable(uid[-12:])}", file=sys.stderr, disable=None
        ) as bar:
            try:
                folder = retrieve_study(
                    peer,
                    series,
                    args.output,
                    ae_title=aet,
                    timeout_s=args.timeout,
                    progress=bar.update,
                    move_port=args.move_port,
                    move_host=args.move_host,
                    tls=tls,
                    move_tls=move_tls,
                    note=lambda line: bar.write(line, file=sys.stderr),
                )
            except CmrError as exc:
                failures += 1
                bar.write(f"cmrsdk: error: {' '.join(str(exc).split())}", file=sys.stderr)
                continue
        kept = sum(1 for p in folder.iterdir() if p.is_dir())  # a series of screen saves only is not kept
        print(f"{folder}: {kept} MR series (segment it: cmrsdk segment {folder} -o OUT)")
    return 1 if failures else 0
