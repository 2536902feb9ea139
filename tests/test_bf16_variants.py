"""benchmarks/bf16_variants.py: every bf16 variant runs the shipped baseline and labels like fp32."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bf16_variants  # noqa: E402
from cmrsdk.engines.torchscript import cpu_bf16_missing  # noqa: E402


@pytest.mark.skipif(cpu_bf16_missing() is not None, reason="this CPU has no native bf16 instructions")
def test_every_variant_prints_a_row_with_its_ratio_and_label_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        bf16_variants.main(["--slices", "2", "--size", "64", "--threads", "1", "--repeats", "1", "--no-inductor"]) == 0
    )
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["ts_fp32", "onnx_fp32", "ts_bf16", "ts_bf16_channels_last", "ts_bf16_frozen"]
    assert float(rows["onnx_fp32"][1]) == 1.0
    for name, (ms, ratio, max_diff, agree) in rows.items():
        assert float(ms) > 0 and float(ratio) > 0
        if name.endswith("fp32"):
            assert float(max_diff) < 1e-4 and float(agree) == 1.0
        else:  # bf16 keeps 8 bits of mantissa: probabilities move, labels hardly
            assert 1e-4 < float(max_diff) < 0.5 and float(agree) > 0.99
