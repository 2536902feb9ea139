"""An integrator's install (runs/redteam13, sweep 13): what the command line says when an
optional package is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

import cmrsdk.cli as cli


@pytest.mark.parametrize("command", ["demo", "segment", "evaluate"])
def test_a_missing_io_package_is_named_before_any_work(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "IO_MODULES", (*cli.IO_MODULES, "cmrsdk_absent_package"))
    out = tmp_path / "out"
    argv = {
        "demo": ["demo", "-o", str(out)],
        "segment": ["segment", str(tmp_path), "-o", str(out)],
        "evaluate": ["evaluate", "--data", str(tmp_path), "-o", str(out)],
    }[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"cmrsdk: error: cmrsdk {command} needs the optional package cmrsdk_absent_package of cmrsdk[io]: "
        "pip install 'cmrsdk[io]'"
    )
    assert not out.exists()


def test_an_optional_package_missing_deeper_in_a_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def needs_ray(args: object) -> int:
        raise ModuleNotFoundError("No module named 'ray'", name="ray")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=needs_ray)  # type: ignore[union-attr]
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cmrsdk: error: needs the optional package 'ray': pip install 'cmrsdk[cohort]' (README 'Installation extras')"
    )


def test_onnxruntime_telemetry_is_off_unless_the_user_turns_it_on() -> None:
    """onnxruntime's POSIX telemetry (1.29+) stays off: the variable is set before any engine loads."""
    import os
    import subprocess
    import sys

    code = "import os, cmrsdk; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "1"
    env["ORT_DISABLE_TELEMETRY"] = "0"  # the user's own choice stands
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "0"


def test_warnings_on_the_command_line_are_one_line_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TorchScript's deprecation notice came with Python's file name and source line (sweep 13, F15)."""
    import warnings

    from cmrsdk.errors import CmrWarning

    def warns(args: object) -> int:
        warnings.warn(CmrWarning("a cmrsdk notice\n  over two lines"), stacklevel=1)
        warnings.warn("another package's notice", UserWarning, stacklevel=1)
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=warns)  # type: ignore[union-attr]
    assert cli.main(["info"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "cmrsdk: warning: a cmrsdk notice over two lines",
        "cmrsdk: warning: UserWarning: another package's notice",
    ]
