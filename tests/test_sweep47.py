"""A newcomer following the documentation word for word (runs/redteam47, sweep 47): what the
command line changed. ``cmrsdk serve --precision`` reaches the node's one pipeline (F8); the node
refuses up front, before it listens, where cmrsdk[io] is incomplete (F11); ``inspect --help`` and
``info --help`` say what they print (F10)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import cmrsdk.cli as cli

pytest.importorskip("pynetdicom")


class _FakeNode:
    """Stands in for `cmrsdk.serve.node.Node`: records the config it was built with, listens nowhere."""

    built: list[Any] = []

    def __init__(self, config: Any) -> None:
        _FakeNode.built.append(config)

    def install_signal_handlers(self) -> None:
        pass

    def start(self) -> None:
        pass

    def wait(self) -> int:
        return 0


@pytest.fixture
def fake_node(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import cmrsdk.serve.node as node

    _FakeNode.built = []
    monkeypatch.setattr(node, "Node", _FakeNode)
    return _FakeNode.built


def _serve_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["serve", "--port", "0", "--spool", str(tmp_path / "spool"), "--output", str(tmp_path / "out"), *extra]


def test_serve_precision_reaches_the_nodes_pipeline_options(tmp_path: Path, fake_node: list[Any]) -> None:
    assert cli.main(_serve_argv(tmp_path, "--precision", "bf16", "--mode", "baseline", "--threads", "1")) == 0
    (config,) = fake_node
    assert config.pipeline["precision"] == "bf16"
    assert config.pipeline["mode"] == "baseline" and config.pipeline["threads"] == 1  # the others still pass


def test_serve_precision_defaults_to_fp32_with_segments_choices(tmp_path: Path, fake_node: list[Any]) -> None:
    assert cli.main(_serve_argv(tmp_path)) == 0
    assert fake_node[0].pipeline["precision"] == "fp32"
    choices = {
        name: next(a.choices for a in sub._actions if a.dest == "precision")
        for name, sub in cli.build_parser()._subparsers._group_actions[0].choices.items()  # type: ignore[union-attr]
        if name in ("segment", "serve")
    }
    assert choices["serve"] == choices["segment"] == ["fp32", "bf16", "int8", "fp16"]


def test_the_node_builds_its_pipeline_in_that_precision_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The plumbing, not the arithmetic: `Node._load_pipeline` hands precision to `Pipeline`, and
    the "ready" line names it."""
    import cmrsdk.pipeline
    import cmrsdk.serve.worker
    from cmrsdk.serve.node import Node, NodeConfig

    built: dict[str, Any] = {}

    class FakePipeline:
        def __init__(self, bundle: Any, **kwargs: Any) -> None:
            built.update(kwargs)
            self.mode = kwargs["mode"]
            self.provenance = {"backends": {"baseline": "openvino"}, "precision": kwargs["precision"]}

    monkeypatch.setattr(cmrsdk.pipeline, "Pipeline", FakePipeline)
    monkeypatch.setattr(cmrsdk.serve.worker, "warm_up_writers", lambda: None)
    args = cli.build_parser().parse_args(_serve_argv(tmp_path, "--precision", "bf16"))
    config = NodeConfig(tmp_path / "spool", tmp_path / "out", pipeline=cli.serve_pipeline_arguments(args))
    with caplog.at_level(logging.INFO, logger="cmrsdk.serve"):
        Node._load_pipeline(SimpleNamespace(config=config))  # type: ignore[arg-type]
    assert built["precision"] == "bf16" and built["mode"] == "routed"
    assert "(routed, openvino), precision bf16" in caplog.text


def test_serve_refuses_without_cmrsdk_io_before_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fake_node: list[Any]
) -> None:
    monkeypatch.setattr(cli, "IO_MODULES", (*cli.IO_MODULES, "cmrsdk_absent_package"))
    assert cli.main(_serve_argv(tmp_path)) == 2
    assert capsys.readouterr().err.strip() == (
        "cmrsdk: error: cmrsdk serve needs the optional package cmrsdk_absent_package of cmrsdk[io]: "
        "pip install 'cmrsdk[io]'"
    )
    assert fake_node == []  # no node built, nothing listening
    assert not (tmp_path / "spool").exists() and not (tmp_path / "out").exists()


def test_serve_status_needs_no_cmrsdk_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--status reads the spool's queue only: it is not refused."""
    from cmrsdk.serve.spool import Spool

    Spool(tmp_path / "spool").close()
    monkeypatch.setattr(cli, "IO_MODULES", (*cli.IO_MODULES, "cmrsdk_absent_package"))
    assert cli.main(["serve", "--status", str(tmp_path / "spool")]) == 0
    assert "needs the optional package" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("inspect", ["ed_es_from: input", "LV volume curve", "Segments nothing"]),
        ("info", ["routing", "preprocessing", "parity"]),
    ],
)
def test_inspect_and_info_help_say_what_they_print(
    command: str, said: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    for words in said:
        assert words in text
    assert "prints" in text.lower()
