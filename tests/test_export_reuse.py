"""export.reuse: what makes two exports the same network, and the copies a block hands out.

The experiment command's use of it (eight models, two networks, two exports) is tested end to end
in tests/test_export_experiment.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from export.models import unet  # noqa: E402
from export.reuse import exported, network_key, reused_exports  # noqa: E402

SETTINGS = ("segmentation", ("onnx",), (64, 64), (32, 32), 64)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return unet(features=[4, 8]).eval()


def test_the_key_follows_weights_settings_shape_and_module_flags():
    net, example = _net(), torch.zeros(2, 1, 64, 64)
    key = network_key(net, example, SETTINGS)
    assert network_key(copy.deepcopy(net), torch.ones(2, 1, 64, 64), SETTINGS) == key  # values only trace
    changed = copy.deepcopy(net)
    with torch.no_grad():
        next(changed.parameters())[0, 0, 0, 0] += 1e-6
    assert network_key(changed, example, SETTINGS) != key
    assert network_key(net, torch.zeros(2, 3, 64, 64), SETTINGS) != key
    assert network_key(net, example, (*SETTINGS[:-1], 32)) != key
    flagged = copy.deepcopy(net)
    flagged.deep_supervision = not getattr(net, "deep_supervision", False)  # a setting forward reads
    assert network_key(flagged, example, SETTINGS) != key


def _writer(calls: list[str]):
    def write(name: str, staging: Path):
        calls.append(name)
        files = {"onnx": staging / f"{name}.onnx", "tensorrt-fp16": staging / f"{name}.fp16.ep"}
        for path in files.values():
            path.write_bytes(f"{len(calls)}".encode())
        return files, {"onnx_opset": 18, "shapes": [1, 2]}

    return write


def test_within_a_block_a_network_is_written_once_and_copied_under_each_name(tmp_path: Path):
    calls: list[str] = []
    write = _writer(calls)
    first, second, other = (tmp_path / n for n in ("first", "second", "other"))
    for folder in (first, second, other):
        folder.mkdir()
    with reused_exports():
        files, extra = exported(lambda: "k1", "baseline", first, lambda: write("baseline", first))
        copies, copied_extra = exported(lambda: "k1", "base", second, lambda: write("base", second))
        exported(lambda: "k2", "apex", other, lambda: write("apex", other))
    assert calls == ["baseline", "apex"]
    assert copies == {"onnx": second / "base.onnx", "tensorrt-fp16": second / "base.fp16.ep"}
    assert all(copies[k].read_bytes() == files[k].read_bytes() == b"1" for k in files)
    assert copied_extra == extra and copied_extra["shapes"] is not extra["shapes"]
    # outside a block every call writes
    exported(lambda: "k1", "base", second, lambda: write("base", second))
    assert calls == ["baseline", "apex", "base"]


def test_a_nested_block_shares_the_outer_ones_exports(tmp_path: Path):
    calls: list[str] = []
    write = _writer(calls)
    with reused_exports():
        exported(lambda: "k", "a", tmp_path, lambda: write("a", tmp_path))
        with reused_exports():
            exported(lambda: "k", "b", tmp_path, lambda: write("b", tmp_path))
        exported(lambda: "k", "c", tmp_path, lambda: write("c", tmp_path))
    assert calls == ["a"] and (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes() == b"1"
