"""The committed demo bundle: verified, small, and segmenting real held-out and synthetic studies.

Thresholds are set below what was measured (docs/RESULTS.md) so that they catch a broken
bundle or pipeline, not noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrsdk import Pipeline, load_bundle
from cmrsdk.cli import DEMO_BUNDLE, main
from cmrsdk.labels import LVBP, LVM, RVBP
from cmrsdk.metrics import dice


def test_demo_bundle_is_verified_and_small():
    bundle = load_bundle(DEMO_BUNDLE)
    # the shipped bundle (0.7.0, stage 13): one U-Net, the mean of two annealed baselines, for every
    # region (region U-Nets fine-tuned from it tie it, docs/RESULTS.md); regions from its masks
    assert set(bundle.models) == {"baseline"}
    assert bundle.classifier is None and bundle.regions_from == "segmentation"
    assert bundle.routing == {0: "baseline", 1: "baseline", 2: "baseline", 3: "baseline"}
    total = sum(p.stat().st_size for p in DEMO_BUNDLE.iterdir())
    assert total <= 60 * 1024 * 1024
    for model in bundle.models.values():
        assert {"torchscript", "onnx"} <= set(model.artifacts)
        for record in model.record["parity"]:
            if record["artifact"] == "onnx-int8":  # python -m export.quantize: its own bound, against fp32
                from export.quantize import INT8_MIN_DECIDED_AGREEMENT

                assert record["passed"] and record["decided_argmax_agreement"] >= INT8_MIN_DECIDED_AGREEMENT
            else:
                assert record["passed"] and record["argmax_agreement"] >= 0.999


def _stack_dice(pred, truth):
    return {name: dice(pred, truth, code) for name, code in (("LVBP", LVBP), ("LVM", LVM), ("RVBP", RVBP))}


#: Dice of the shipped bundle on the embedded example (phantom seed 0, 20 frames), per phase.
#: Measured with the bundle trained on real ACDC only (never on the phantom), ED / ES: LVBP 0.957 /
#: 0.926, LVM 0.901 / 0.880, RVBP 0.923 / 0.960; LVEF 63.1 % against the true 63.7 %. (Before the
#: phantom's atria, stack planning and trabecular layer were made realistic: 0.727 / 0.000, 0.729 /
#: 0.757, 0.829 / 0.730, LVEF 60.6 against 62.8.) Floors 5 to 6 points below, so that a retrained
#: bundle of the same recipe passes and a broken bundle, pipeline or phantom fails.
EXAMPLE_DICE_FLOOR = {
    ("LVBP", "ED"): 0.90,
    ("LVM", "ED"): 0.84,
    ("RVBP", "ED"): 0.86,
    ("LVBP", "ES"): 0.86,
    ("LVM", "ES"): 0.82,
    ("RVBP", "ES"): 0.90,
}


def test_demo_command_segments_the_example_study(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    out = capsys.readouterr().out
    for name in ("labels_ED.nii.gz", "labels_ES.nii.gz", "seg_ED.dcm", "seg_ES.dcm", "overlay.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(report["phases"]) >= 20 and len(report["lv_volume_curve_ml"]) >= 20  # a cine, not ED and ES only
    truth = report["ground_truth"]
    for (name, phase), floor in EXAMPLE_DICE_FLOOR.items():
        assert truth[f"Dice {name} {phase}"] >= floor, (name, phase, truth)
    assert abs(report["measures"]["lvef_pct"] - truth["true LVEF (%)"]) < 5  # measured 0.6 points
    assert "LVEF" in out and "Dice against the ground truth" in out and f"{truth['Dice LVBP ED']:.3f}" in out


def test_example_atria_are_not_ventricle():
    """At ES the base has descended: the example's first slice shows atria, which get no ventricle label."""
    from cmrsdk.phantom import cine_phantom

    study = cine_phantom(0, n_phases=2)
    assert not study.es.labels[0].any()  # the truth: atria, aortic root, outflow tract
    atrial = Pipeline(DEMO_BUNDLE).segment(study.es).labels[0]
    counts = np.bincount(atrial.ravel(), minlength=4)
    # measured: no LV or RV blood pool, 246 pixels of LV myocardium (a ring drawn round the right
    # atrium; the slice holds about 35,000 pixels). Before: 1,909 pixels of LV blood pool.
    assert counts[LVBP] < 100 and counts[RVBP] < 100 and counts[LVM] < 800, counts


@pytest.mark.parametrize("mode", ["routed", "baseline", "oracle"])
def test_demo_bundle_on_held_out_acdc(shared_data, mode):
    from cmrsdk.io import read_acdc_patient

    from cmrsdk.evaluation import ground_truth_regions

    # the oracle: routed by the ground truth's regions, handed in
    pipeline = Pipeline(DEMO_BUNDLE, mode="routed" if mode == "oracle" else mode)
    source = ground_truth_regions if mode == "oracle" else None
    scores = []
    for patient in ("patient005", "patient050", "patient095"):  # held out from training (every 5th)
        study = read_acdc_patient(shared_data / "acdc" / "training" / patient)
        for stack in (study.ed, study.es):
            scores.append(_stack_dice(pipeline.segment(stack, region_source=source).labels, stack.labels))
    mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    # measured on all 20 held-out patients (docs/RESULTS.md): stack Dice about 0.95 / 0.89 / 0.89
    assert mean["LVBP"] > 0.90 and mean["LVM"] > 0.82 and mean["RVBP"] > 0.80, mean


@pytest.mark.parametrize("kind", ["blank", "constant", "noise"])
def test_no_heart_no_mask(kind):
    """Images without a heart get no mask: the regions from the segmentation call every slice non-cardiac."""
    from cmrsdk.types import Stack

    rng = np.random.default_rng(0)
    pixels = {
        "blank": np.zeros((8, 192, 192), np.float32),
        "constant": np.full((8, 192, 192), 300.0, np.float32),
        "noise": rng.rayleigh(40.0, (8, 192, 192)).astype(np.float32),
    }[kind]
    result = Pipeline(DEMO_BUNDLE).segment(Stack(pixels, (10.0, 1.4, 1.4)))
    assert not result.labels.any(), (kind, np.bincount(result.labels.ravel()))
    assert (result.regions == 0).all()


def test_a_phase_of_a_study_with_a_heart_is_not_emptied_by_the_confidence_gate(shared_data):
    """M&Ms H1N8S6 with test-time mirroring: the baseline's certainty at ES falls to 0.901, under
    the whole-stack gate (0.92) meant for series without a heart. The study's ED showed the heart,
    so ES keeps its masks (before: ES emptied, LVEF reported as 100 %)."""
    from cmrsdk.io import read_mnms_subject

    study = read_mnms_subject(shared_data / "mnms" / "H1N8S6")
    result = Pipeline(DEMO_BUNDLE, mirroring=True).segment_study(study)
    assert result.measures.lvesv_ml > 30.0  # manual: 40.5 mL
    assert 45.0 < result.measures.lvef_pct < 70.0  # manual: 57.6 %
    # kept, but said (0.14.4): a later phase the networks are unsure of is flagged as a first is
    assert "low_confidence" in result.es.flags and "low_confidence" not in result.ed.flags
    # alone, the ES stack is under the gate too, but its masks are a heart (an LV blood pool ringed
    # by myocardium over several slices): kept, and flagged, where 0.13.0 emptied it (session 40)
    alone = Pipeline(DEMO_BUNDLE, mirroring=True).segment(study.es)
    assert alone.labels.any() and "low_confidence" in alone.flags
    assert "low_confidence" not in Pipeline(DEMO_BUNDLE).segment(study.ed).flags


def test_the_shipped_artifacts_carry_no_export_machine_paths():
    """torch's exporters write the export machine's source paths into the artifacts (TorchScript's
    ``.debug_pkl`` entries, ONNX nodes' ``pkg.torch.onnx.stack_trace``): export/bundle.py strips
    them, and the shipped bundle carries none (session 45 stripped 0.7.0's: the same outputs)."""
    import zipfile

    import onnx

    from export.bundle import ONNX_STACK_TRACE

    with zipfile.ZipFile(DEMO_BUNDLE / "baseline.pt") as archive:
        assert not [n for n in archive.namelist() if n.endswith(".debug_pkl")]
    proto = onnx.load(str(DEMO_BUNDLE / "baseline.onnx"))
    assert not [p for node in proto.graph.node for p in node.metadata_props if p.key == ONNX_STACK_TRACE]
