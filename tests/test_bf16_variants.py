"""benchmarks/bf16_variants.py: every bf16 variant runs the shipped baseline and labels like fp32."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
from cmrsdk.engines.torchscript import cpu_bf16_missing  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_variants.py"


@pytest.mark.skipif(cpu_bf16_missing() is not None, reason="this CPU has no native bf16 instructions")
def test_every_variant_prints_a_row_with_its_ratio_and_label_agreement() -> None:
    # a process of its own, as a user runs it: the benchmark sets torch's thread count
    args = ["--slices", "2", "--size", "64", "--threads", "1", "--repeats", "1", "--no-inductor"]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 1 :] if line.strip()}
    assert list(rows) == ["ts_fp32", "onnx_fp32", "ts_bf16", "ts_bf16_channels_last", "ts_bf16_frozen"]
    assert float(rows["onnx_fp32"][1]) == 1.0
    for name, (ms, ratio, max_diff, agree) in rows.items():
        assert float(ms) > 0 and float(ratio) > 0
        if name.endswith("fp32"):
            assert float(max_diff) < 1e-4 and float(agree) == 1.0
        else:  # bf16 keeps 8 bits of mantissa: probabilities move, labels hardly
            assert 1e-4 < float(max_diff) < 0.5 and float(agree) > 0.99
