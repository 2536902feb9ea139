"""Sweep 51's command-line findings: each bad input is one clear cmrsdk error (or warning) naming
the file, option and value, before anything is written or listened on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cmrsdk import DEMO_BUNDLE
from cmrsdk.bundle import MANIFEST_NAME, load_bundle
from cmrsdk.cli import main
from cmrsdk.cohort.discover import read_study_list
from cmrsdk.errors import BundleError, InputError, WriteError
from cmrsdk.study import _replace_folder, check_output_folder


@pytest.fixture()
def demo_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEMO_BUNDLE, tmp_path / "bundle"))


# ---- 1: --list in another encoding, unreadable, a folder -------------------------------------


def test_a_windows_1252_list_is_refused_naming_the_file_line_and_byte(tmp_path: Path):
    listing = tmp_path / "list.csv"
    listing.write_bytes(b"study_id,source\nM\xfcller,/nowhere/patient001\n")
    with pytest.raises(InputError) as caught:
        read_study_list(listing)
    assert str(caught.value) == (
        f"{listing}: line 2: not UTF-8 text (byte 0xfc at column 2; a Windows-1252 or Latin-1 export?); "
        "save the list as 'CSV UTF-8'"
    )


def test_a_utf8_list_with_a_byte_order_mark_is_read(tmp_path: Path):
    listing = tmp_path / "list.csv"
    listing.write_bytes("\ufeffstudy_id,source\nMüller,p1\n".encode())
    (study,) = read_study_list(listing)
    assert (study.study_id, study.source) == ("Müller", str(tmp_path / "p1"))


def test_batch_with_a_windows_1252_list_is_one_line_and_makes_no_output(tmp_path: Path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_bytes(b"study_id,source\nM\xfcller,/nowhere/patient001\n")
    out = tmp_path / "out"
    assert main(["batch", "--list", str(listing), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cmrsdk: error: {listing}: line 2: not UTF-8 text") and err.count("\n") == 1
    assert not out.exists()


def test_a_list_that_cannot_be_read_or_is_a_folder_or_utf16_is_named(tmp_path: Path, monkeypatch):
    with pytest.raises(InputError, match=r"^--list '.*': is a folder, not a CSV file$"):
        read_study_list(tmp_path)
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes("source\np1\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"is UTF-16 text, not UTF-8; save the list as 'CSV UTF-8'$"):
        read_study_list(utf16)
    denied = tmp_path / "denied.csv"
    denied.write_text("source\np1\n")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(InputError) as caught:
        read_study_list(denied)
    assert str(caught.value) == f"--list '{denied}': cannot be read (permission denied)"


# ---- 3: --workers 0 / --threads 0 refused before OUT is made --------------------------------


@pytest.mark.parametrize("option", ["--workers", "--threads"])
def test_batch_workers_or_threads_0_is_refused_before_the_output_is_made(
    option: str, tmp_path: Path, shared_data: Path, capsys
):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["batch", str(shared_data / "acdc/training/patient001"), "-o", str(out), option, "0"])
    assert exited.value.code == 2
    assert f"argument {option}: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    assert not out.exists()


# ---- 6 and 11: the bundle manifest ----------------------------------------------------------


def test_a_manifest_nested_too_deeply_is_one_bundle_error(demo_copy: Path, capsys):
    manifest = demo_copy / MANIFEST_NAME
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError) as caught:
        load_bundle(demo_copy)
    assert str(caught.value) == f"{manifest}: not valid JSON (nested too deeply)"
    assert main(["info", str(demo_copy)]) == 2
    assert capsys.readouterr().err == f"cmrsdk: error: {manifest}: not valid JSON (nested too deeply)\n"


@pytest.mark.parametrize("field", ["target_spacing", "segment_spacing"])
def test_an_infinite_spacing_is_refused_naming_the_manifest_field(demo_copy: Path, field: str):
    manifest = demo_copy / MANIFEST_NAME
    raw = json.loads(manifest.read_text())
    raw["preprocessing"][field] = [float("inf"), float("inf")]
    manifest.write_text(json.dumps(raw))  # writes Infinity, as the sweep's bundle had it
    with pytest.raises(BundleError) as caught:
        load_bundle(demo_copy)
    message = str(caught.value)
    assert message.startswith(f"{manifest}: 'preprocessing.{field}' must be two finite positive mm values")
    assert message.endswith("got [inf, inf]")


# ---- 12 and 22: serve refuses before it listens; its TLS error names the file -----------------


class _NoNode:
    """Stands for `cmrsdk.serve.node.Node`: the test fails if the node is built (it would listen)."""

    def __init__(self, config) -> None:
        raise AssertionError("the node was built: the refusal came after listening")


def _serve(tmp_path: Path, *extra: str) -> int:
    return main(["serve", "--port", "0", "--aet", "X", "--spool", str(tmp_path / "spool"), *extra])


def test_serve_with_an_output_that_is_a_file_is_refused_before_listening(tmp_path: Path, monkeypatch, capsys):
    pytest.importorskip("pynetdicom")
    monkeypatch.setattr("cmrsdk.serve.node.Node", _NoNode)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    assert _serve(tmp_path, "--output", str(afile)) == 2
    assert capsys.readouterr().err == (
        f"cmrsdk: error: --output value '{afile}' is invalid: {afile} is a file, not a folder\n"
    )
    assert _serve(tmp_path, "--output", str(afile / "o")) == 2
    assert f"--output value '{afile / 'o'}' is invalid: {afile} is a file" in capsys.readouterr().err


def test_serve_with_a_corrupt_bundle_is_refused_before_listening(demo_copy: Path, tmp_path: Path, monkeypatch, capsys):
    pytest.importorskip("pynetdicom")
    monkeypatch.setattr("cmrsdk.serve.node.Node", _NoNode)
    manifest = demo_copy / MANIFEST_NAME
    manifest.write_text(manifest.read_text()[:200])
    assert _serve(tmp_path, "--output", str(tmp_path / "o"), "--bundle", str(demo_copy)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cmrsdk: error: {manifest}: not valid JSON (") and err.count("\n") == 1


def test_serve_tls_error_names_only_the_options_given_and_the_file_at_fault(tmp_path: Path, monkeypatch, capsys):
    pytest.importorskip("pynetdicom")
    monkeypatch.setattr("cmrsdk.serve.node.Node", _NoNode)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    assert _serve(tmp_path, "--output", str(tmp_path / "o"), "--tls-cert", str(garbage), "--tls-key", str(garbage)) == 2
    err = capsys.readouterr().err
    assert err == (
        f"cmrsdk: error: TLS: --tls-cert '{garbage}' is not a PEM certificate; "
        f"--tls-key '{garbage}' is not a PEM private key\n"
    )
    assert "--tls-ca" not in err


def test_a_node_that_cannot_listen_closes_its_spool(tmp_path: Path):
    pytest.importorskip("pynetdicom")
    from cmrsdk.serve.node import Node, NodeConfig
    from cmrsdk.serve.scp import ScpOptions

    node = Node(NodeConfig(spool=tmp_path / "spool", output=tmp_path / "o", scp=ScpOptions(host="10.255.255.1")))
    with pytest.raises(InputError, match="--host 10.255.255.1: no such address on this machine"):
        node.start()
    assert node.spool._closed and node.spool._lock_file.closed


# ---- 23: a stop signal once the command has finished ---------------------------------------


def test_a_sigint_after_the_command_finished_does_not_change_the_exit_status():
    script = (
        "import os, signal, sys, time\n"
        "from cmrsdk.cli import main\n"
        "sys.argv = ['cmrsdk', 'info']\n"
        "status = main()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_main_called_with_arguments_leaves_the_callers_sigint_handler(capsys):
    before = signal.getsignal(signal.SIGINT)
    assert main(["info"]) == 0
    assert signal.getsignal(signal.SIGINT) is before


# ---- 24: routed-only options with --mode baseline ------------------------------------------


def test_routed_only_options_are_noted_in_baseline_mode(tmp_path: Path, capsys):
    argv = ["segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o"), "--mode", "baseline"]
    main([*argv, "--apical-rv-weight", "2", "--segment-spacing", "1.0"])
    err = capsys.readouterr().err.splitlines()
    assert "cmrsdk: warning: --apical-rv-weight applies to routed mode only; ignored with --mode baseline" in err
    assert "cmrsdk: warning: --segment-spacing applies to routed mode only; ignored with --mode baseline" in err
    main(argv)  # not given: no note
    assert "routed mode only" not in capsys.readouterr().err
    main(["segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o"), "--apical-rv-weight", "2"])
    assert "routed mode only" not in capsys.readouterr().err


# ---- 25: a read-only output folder ---------------------------------------------------------


def test_a_read_only_output_folder_is_refused_not_replaced(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(WriteError) as caught:
            check_output_folder(out)
        assert str(caught.value) == (
            f"{out}: output folder is read-only (mode 555); a study's folder is replaced whole, so make it "
            "writable (chmod u+w) or choose another -o"
        )
    finally:
        out.chmod(0o755)


def test_a_replaced_output_folder_keeps_its_mode(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o700)
    staging = tmp_path / ".staging"
    staging.mkdir(mode=0o755)
    staging.chmod(0o755)
    (staging / "report.json").write_text("{}")
    _replace_folder(staging, out)
    assert (out / "report.json").is_file()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
