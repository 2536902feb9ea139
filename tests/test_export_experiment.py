"""export/experiment.py: run summaries, the classifier choice, stored Table 2, RESULTS.md and datasets.

StoredRegions is covered in tests/test_region_source.py. The end-to-end test of the generated
section uses the recognisable routing bundle of tests/_bundles.py: the baseline answers
background everywhere, the base model LVBP, the middle model LVM and the apex model RVBP.
"""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from cmrsdk.errors import ReadError
from cmrsdk.labels import APEX, BASE, MIDDLE, NON_CARDIAC
from export.experiment import (
    BEGIN,
    END,
    best_classifier,
    datasets,
    generated_section,
    run_summary,
    stored_classifier_table,
    write_results_md,
)


# -- run_summary / best_classifier ----------------------------------------------------------------


@pytest.fixture(scope="module")
def log_fields():
    """export.train._log_fields (export.train imports torch at module level)."""
    pytest.importorskip("torch")
    from export.train import _log_fields

    return _log_fields


def _write_run(
    runs: Path, name: str, fields: list[str], rows: list[dict[str, object]], weights: str | None = None
) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    with (run / "log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: str(v) for k, v in row.items()})
    if weights:
        (run / weights).write_bytes(b"")  # best_classifier / run_summary only check it exists
    return run


def _classifier_rows(seconds: list[float], validated: dict[int, tuple[float, float, float]]) -> list[dict[str, object]]:
    """One row per 100 iterations; rows whose index is in ``validated`` carry (accuracy, precision, recall)."""
    rows = []
    for i, s in enumerate(seconds):
        row: dict[str, object] = {
            "iteration": 100 * (i + 1),
            "lr": "0.001",
            "train_loss": "0.5",
            "seconds_per_iteration": f"{s:.4f}",
        }
        if i in validated:
            accuracy, precision, recall = validated[i]
            row.update({"val_loss": "0.4", "val_accuracy": accuracy, "val_precision": precision, "val_recall": recall})
        rows.append(row)
    return rows


@pytest.fixture
def runs(tmp_path, log_fields) -> Path:
    runs = tmp_path / "runs"
    seg, cls = log_fields("segmentation"), log_fields("classification")
    assert {"val_dice_LVBP", "val_dice_LVM", "val_dice_RVBP"} <= set(seg)
    assert {"val_accuracy", "val_precision", "val_recall"} <= set(cls)
    # the last row is a checkpoint without validation: the figures come from the row before
    _write_run(
        runs,
        "unet_baseline",
        seg,
        [
            {"iteration": 250, "lr": "0.01", "train_loss": "0.9", "seconds_per_iteration": "0.5000"},
            {
                "iteration": 500,
                "lr": "0.009",
                "train_loss": "0.7",
                "seconds_per_iteration": "0.7000",
                "val_loss": "0.3",
                "val_dice_LVBP": "0.91234",
                "val_dice_LVM": "0.8",
                "val_dice_RVBP": "0.85",
                "val_dice_mean": "0.85",
            },
            {
                "iteration": 750,
                "lr": "0.008",
                "train_loss": "0.6",
                "seconds_per_iteration": "0.4000",
                "val_loss": "0.25",
                "val_dice_LVBP": "0.93",
                "val_dice_LVM": "0.8351",
                "val_dice_RVBP": "0.86",
                "val_dice_mean": "0.87",
            },
            {"iteration": 1000, "lr": "0.007", "train_loss": "0.5", "seconds_per_iteration": "0.9000"},
        ],
        weights="model.pt",
    )
    _write_run(
        runs,
        "unet_apex",
        seg,
        [
            {"iteration": 50, "lr": "0.01", "train_loss": "0.9", "seconds_per_iteration": "1.5"},
        ],
    )  # never validated, no weights
    _write_run(
        runs, "classifier_resnet18", cls, _classifier_rows([0.2, 0.3, 0.1], {1: (0.9, 0.88, 0.80)}), weights="model.pt"
    )
    _write_run(
        runs,
        "classifier_mobilenet_v2",
        cls,
        _classifier_rows([0.2, 0.2], {0: (0.7, 0.7, 0.70), 1: (0.86, 0.85, 0.85)}),
        weights="last.pt",
    )
    _write_run(
        runs, "classifier_densenet121", cls, _classifier_rows([0.6, 0.8], {1: (0.95, 0.95, 0.95)})
    )  # best recall, but predictions only
    _write_run(
        runs,
        "classifier_densenet121_weighted",
        cls,
        _classifier_rows([0.6], {0: (0.99, 0.99, 0.99)}),
        weights="model.pt",
    )  # never chosen
    _write_run(runs, "classifier_foo", cls, _classifier_rows([0.1], {0: (1.0, 1.0, 1.0)}), weights="model.pt")
    return runs


def test_run_summary_reads_logs(runs):
    summary = run_summary(runs)
    by_run = {r["run"]: r for r in summary}
    # the comparison's runs only, in the order of UNETS then CLASSIFIERS
    assert [r["run"] for r in summary] == [
        "unet_baseline",
        "unet_apex",
        "classifier_densenet121",
        "classifier_mobilenet_v2",
        "classifier_resnet18",
        "classifier_densenet121_weighted",
    ]

    unet = by_run["unet_baseline"]
    assert unet["iterations"] == 1000  # the last row's, validated or not
    assert unet["s_per_iteration"] == pytest.approx(0.6)  # median of 0.5, 0.7, 0.4, 0.9 (the mean is 0.625)
    assert unet["validation"] == "0.930 / 0.835 / 0.860"  # the last validated row: LVBP / LVM / RVBP
    assert unet["weights"] == "yes"
    assert "val_recall" not in unet

    apex = by_run["unet_apex"]
    assert (apex["iterations"], apex["s_per_iteration"], apex["validation"], apex["weights"]) == (
        50,
        pytest.approx(1.5),
        "",
        "predictions only",
    )

    resnet = by_run["classifier_resnet18"]
    assert resnet["iterations"] == 300
    assert resnet["s_per_iteration"] == pytest.approx(0.2)
    assert resnet["validation"] == "accuracy 0.900, precision 0.880, recall 0.800"
    assert resnet["val_recall"] == pytest.approx(0.80)
    assert resnet["weights"] == "yes"

    mobilenet = by_run["classifier_mobilenet_v2"]
    assert mobilenet["weights"] == "yes"  # last.pt counts too
    assert mobilenet["validation"] == "accuracy 0.860, precision 0.850, recall 0.850"  # last of two validated rows
    assert mobilenet["val_recall"] == pytest.approx(0.85)

    assert by_run["classifier_densenet121"]["weights"] == "predictions only"
    assert by_run["classifier_densenet121"]["val_recall"] == pytest.approx(0.95)
    assert by_run["classifier_densenet121_weighted"]["weights"] == "yes"


def test_best_classifier_needs_weights_and_skips_weighted(runs):
    summary = run_summary(runs)
    # densenet121 (0.95) has no weights, densenet121_weighted (0.99) is never the routed one
    assert best_classifier(summary, runs) == "classifier_mobilenet_v2"
    (runs / "classifier_mobilenet_v2" / "last.pt").unlink()
    assert best_classifier(run_summary(runs), runs) == "classifier_resnet18"
    (runs / "classifier_resnet18" / "model.pt").unlink()
    # left with weights: unet_baseline and classifier_densenet121_weighted only
    with pytest.raises(ReadError, match="no classifier run with weights") as info:
        best_classifier(run_summary(runs), runs)
    assert info.value.path == str(runs)


def test_best_classifier_on_no_runs_raises(tmp_path):
    assert run_summary(tmp_path) == []
    with pytest.raises(ReadError):
        best_classifier([], tmp_path)


def test_run_summary_from_weights_when_the_log_did_not_come_back(runs):
    torch = pytest.importorskip("torch")
    # as export.train.export_weights leaves them: the metrics of the last validation and the iteration
    (runs / "unet_middle").mkdir()
    torch.save(
        {
            "iteration": 800,
            "state_dict": {},
            "metrics": {"loss": 0.2, "dice_LVBP": 0.9412, "dice_LVM": 0.8226, "dice_RVBP": 0.8779, "dice_mean": 0.88},
        },
        runs / "unet_middle" / "model.pt",
    )
    (runs / "unet_middle.out").write_text(
        "unet_middle: 10%|#| ...\ndone: iteration 400, 0.400 s/iteration, ...\n"
        "resumed\ndone: iteration 800, 0.350 s/iteration, best ...\n"
    )
    (runs / "classifier_squeezenet").mkdir()
    torch.save(
        {"iteration": 120, "state_dict": {}, "metrics": {"accuracy": 0.97, "precision": 0.96, "recall": 0.97}},
        runs / "classifier_squeezenet" / "last.pt",
    )  # no console output either
    (runs / "unet_sampling_low").mkdir()  # neither log nor weights: left out

    summary = run_summary(runs)
    by_run = {r["run"]: r for r in summary}
    assert [r["run"] for r in summary][:3] == ["unet_baseline", "unet_middle", "unet_apex"]
    assert "unet_sampling_low" not in by_run
    middle = by_run["unet_middle"]
    assert (middle["iterations"], middle["validation"], middle["weights"]) == (800, "0.941 / 0.823 / 0.878", "yes")
    assert middle["s_per_iteration"] == pytest.approx(0.35)  # the last sitting's
    squeezenet = by_run["classifier_squeezenet"]
    assert squeezenet["iterations"] == 120 and squeezenet["weights"] == "yes"
    assert np.isnan(squeezenet["s_per_iteration"])
    assert squeezenet["val_recall"] == pytest.approx(0.97)
    assert best_classifier(summary, runs) == "classifier_squeezenet"


def test_best_classifier_ignores_unvalidated_runs(tmp_path, log_fields):
    cls = log_fields("classification")
    # alexnet comes first in CLASSIFIERS: checkpointed (last.pt) before its first validation
    _write_run(tmp_path, "classifier_alexnet", cls, _classifier_rows([0.2], {}), weights="last.pt")
    _write_run(tmp_path, "classifier_resnet18", cls, _classifier_rows([0.2], {0: (0.9, 0.9, 0.8)}), weights="model.pt")
    summary = run_summary(tmp_path)
    assert np.isnan(summary[0]["val_recall"]) and summary[0]["validation"] == ""
    assert best_classifier(summary, tmp_path) == "classifier_resnet18"


def test_run_summary_survives_a_header_only_log(tmp_path, log_fields):
    _write_run(
        tmp_path,
        "unet_baseline",
        log_fields("segmentation"),
        [{"iteration": 10, "seconds_per_iteration": "0.5"}],
        weights="model.pt",
    )
    _write_run(tmp_path, "unet_base", log_fields("segmentation"), [])  # header only
    rows = {r["run"]: r for r in run_summary(tmp_path)}
    assert rows["unet_baseline"]["iterations"] == 10
    assert "unet_base" not in rows or rows["unet_base"]["iterations"] == 0


# -- stored_classifier_table ----------------------------------------------------------------------

SWAP = np.array([NON_CARDIAC, MIDDLE, BASE, APEX])  # base <-> middle


def _peaked(regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Probabilities peaking (0.6 + 0.1) at ``regions``, jittered so that no two paths tie."""
    p = np.full((len(regions), 4), 0.1) + rng.uniform(0.0, 0.02, (len(regions), 4))
    p[np.arange(len(regions)), regions] += 0.6
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _monotone_reference(p: np.ndarray) -> np.ndarray:
    """Brute force: the most probable sequence reading nc*, base*, middle*, apex*, nc* (or apex to base)."""
    allowed = re.compile(r"^0*1*2*3*0*$|^0*3*2*1*0*$")
    log_p = np.log(p.astype(np.float64))
    best, best_seq = -np.inf, None
    for seq in itertools.product(range(4), repeat=len(p)):
        if allowed.match("".join(map(str, seq))):
            score = log_p[np.arange(len(p)), seq].sum()
            if score > best:
                best, best_seq = score, seq
    return np.asarray(best_seq)


def _weighted_precision_recall(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, np.ndarray]:
    confusion = np.zeros((4, 4), np.int64)
    for t, p in zip(truth, predicted):
        confusion[t, p] += 1
    support, predicted_n, diag = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    precision = [diag[k] / predicted_n[k] if predicted_n[k] else 0.0 for k in range(4)]
    recall = [diag[k] / support[k] if support[k] else 0.0 for k in range(4)]
    w = support / support.sum()
    return float(np.dot(precision, w) * 100), float(np.dot(recall, w) * 100), confusion


@pytest.fixture
def stacks():
    """(case, phase) -> true regions base to apex (slice order z = 0, 1, ...)."""
    return {
        ("acdc/patient005", "ED"): np.array([NON_CARDIAC, BASE, MIDDLE, MIDDLE, APEX, NON_CARDIAC]),
        ("acdc/patient005", "ES"): np.array([BASE, MIDDLE, MIDDLE, APEX]),
        ("mnms/A1B2C3", "ED"): np.array([NON_CARDIAC, BASE, MIDDLE, APEX]),
    }


#: the order the rows are stored in, per stack: each reads as no single crossing of the heart
#: (ED 2,0,0,1,3,2; ES 2,1,3,2; M&Ms 1,3,0,2), so decoding them unsorted would get them wrong
STORED_ORDER = {
    ("acdc/patient005", "ED"): [3, 0, 5, 1, 4, 2],
    ("acdc/patient005", "ES"): [2, 0, 3, 1],
    ("mnms/A1B2C3", "ED"): [1, 3, 0, 2],
}


@pytest.fixture
def predictions(stacks):
    """An export.predict-like dict: rows stored with z out of order; resnet18 right, alexnet swapping."""
    rng = np.random.default_rng(0)
    cases, phases, z, regions, perfect, swapped = [], [], [], [], [], []
    for (case, phase), truth in stacks.items():
        order = np.array(STORED_ORDER[(case, phase)])
        cases += [case] * len(truth)
        phases += [phase] * len(truth)
        z.append(order)
        regions.append(truth[order])
        perfect.append(_peaked(truth, rng)[order])
        swapped.append(_peaked(SWAP[truth], rng)[order])
    return {
        "cases": np.array(cases),
        "phases": np.array(phases),
        "z": np.concatenate(z),
        "regions": np.concatenate(regions).astype(np.uint8),
        "classifier_resnet18": np.concatenate(perfect),
        "classifier_alexnet": np.concatenate(swapped),
        "classifier_not_in_the_comparison": np.concatenate(swapped),
    }


def test_stored_classifier_table_acdc(stacks, predictions):
    rows = stored_classifier_table(predictions, "acdc/")
    # only the classifiers of the comparison that are stored, in CLASSIFIERS order
    assert [r["classifier"] for r in rows] == ["alexnet", "resnet18"]
    alexnet, resnet = rows

    assert resnet["precision"] == pytest.approx(100.0) and resnet["recall"] == pytest.approx(100.0)
    assert resnet["monotone_precision"] == pytest.approx(100.0)  # needs the slices sorted by z
    assert resnet["monotone_recall"] == pytest.approx(100.0)
    assert resnet["confusion"] == "2,0,0,0 / 0,2,0,0 / 0,0,4,0 / 0,0,0,2"
    assert resnet["paper_precision_recall_nhs"] == "90.94 / 90.94"

    # argmax swaps base and middle: only the 2 non-cardiac and 2 apical slices of 10 are right
    assert alexnet["precision"] == pytest.approx(40.0) and alexnet["recall"] == pytest.approx(40.0)
    assert alexnet["confusion"] == "2,0,0,0 / 0,0,2,0 / 0,4,0,0 / 0,0,0,2"
    assert len(alexnet["confusion"].split(" / ")) == 4
    assert alexnet["paper_precision_recall_nhs"] == "87.54 / 87.56"

    # monotone decoding, against a brute-force search over the sequences that cross the heart once
    truth, decoded = [], []
    for key in sorted(k for k in stacks if k[0].startswith("acdc/")):
        rows = np.flatnonzero((predictions["cases"] == key[0]) & (predictions["phases"] == key[1]))
        rows = rows[np.argsort(predictions["z"][rows])]
        assert np.array_equal(predictions["regions"][rows], stacks[key])
        truth.append(stacks[key])
        decoded.append(_monotone_reference(predictions["classifier_alexnet"][rows]))
    precision, recall, _ = _weighted_precision_recall(np.concatenate(truth), np.concatenate(decoded))
    assert alexnet["monotone_precision"] == pytest.approx(precision)
    assert alexnet["monotone_recall"] == pytest.approx(recall)
    # the argmax reading (non-cardiac, middle, base, ...) does not cross the heart once: decoding changes it
    argmax = np.concatenate([SWAP[t] for t in truth])
    assert not np.array_equal(np.concatenate(decoded), argmax)
    assert alexnet["monotone_precision"] != pytest.approx(alexnet["precision"])


def test_stored_classifier_table_prefix_filters_datasets(predictions):
    rows = {r["classifier"]: r for r in stored_classifier_table(predictions, "mnms/")}
    assert set(rows) == {"alexnet", "resnet18"}
    # one stack of 4 slices, one per region
    assert rows["alexnet"]["confusion"] == "1,0,0,0 / 0,0,1,0 / 0,1,0,0 / 0,0,0,1"
    assert rows["alexnet"]["precision"] == pytest.approx(50.0) and rows["alexnet"]["recall"] == pytest.approx(50.0)
    assert rows["resnet18"]["confusion"] == "1,0,0,0 / 0,1,0,0 / 0,0,1,0 / 0,0,0,1"


def test_stored_classifier_table_skips_absent_classifiers(predictions):
    only = {k: v for k, v in predictions.items() if k != "classifier_alexnet"}
    only["classifier_densenet121_weighted"] = predictions["classifier_resnet18"]
    rows = stored_classifier_table(only, "acdc/")
    assert [r["classifier"] for r in rows] == ["resnet18", "densenet121_weighted"]
    assert rows[1]["paper_precision_recall_nhs"] == "–"  # not in the paper
    assert rows[1]["recall"] == pytest.approx(100.0)
    no_classifier = {k: v for k, v in predictions.items() if not k.startswith("classifier_")}
    assert stored_classifier_table(no_classifier, "acdc/") == []


# -- write_results_md -----------------------------------------------------------------------------


def _section(body: str) -> str:
    return "\n".join([BEGIN, "", body, "", END])


def test_write_results_md_replaces_only_between_the_markers(tmp_path):
    path = tmp_path / "RESULTS.md"
    before = "# Results\n\nHand-written introduction – with Dice ≥ 0.9.\n\n"
    after = "\n\n## Discussion\n\nWritten by hand; kept as it is.\n"
    path.write_text(before + _section("old generated text") + after, encoding="utf-8")
    write_results_md(path, _section("| new | table |"))
    text = path.read_text(encoding="utf-8")
    assert text == before + _section("| new | table |") + after
    assert "old generated text" not in text
    assert path.read_bytes().startswith(before.encode()) and path.read_bytes().endswith(after.encode())


def test_write_results_md_appends_then_replaces(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nNo generated part yet.\n\n\n")
    write_results_md(path, _section("first"))
    assert path.read_text() == "# Results\n\nNo generated part yet.\n\n" + _section("first") + "\n"
    write_results_md(path, _section("second"))
    text = path.read_text()
    assert text == "# Results\n\nNo generated part yet.\n\n" + _section("second") + "\n"
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and "first" not in text
    write_results_md(path, _section("second"))
    assert path.read_text() == text  # idempotent


def test_write_results_md_creates_the_file(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_results_md(path, _section("generated"))
    assert path.read_text() == "# Results\n\n" + _section("generated") + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary file left


# -- datasets -------------------------------------------------------------------------------------


def test_datasets_holds_out_every_fifth_patient(tmp_path):
    acdc, mnms = tmp_path / "acdc", tmp_path / "mnms"
    for i in range(1, 11):
        (acdc / "training" / f"patient{i:03d}").mkdir(parents=True)
    (acdc / "training" / "patient015.txt").write_text("a file, not a patient")
    (mnms / "B2C3D4").mkdir(parents=True)
    (mnms / "A1B2C3").mkdir()
    (mnms / "notes.csv").write_text("not a subject")

    found = datasets(acdc, mnms, every=5)
    assert set(found) == {"acdc_heldout", "mnms"}
    assert found["acdc_heldout"] == [acdc / "training" / "patient005", acdc / "training" / "patient010"]
    assert found["mnms"] == [mnms / "A1B2C3", mnms / "B2C3D4"]
    assert datasets(acdc, mnms, every=3)["acdc_heldout"] == [acdc / "training" / f"patient{i:03d}" for i in (3, 6, 9)]

    missing = datasets(acdc, tmp_path / "no_mnms_here")
    assert set(missing) == {"acdc_heldout"}
    assert missing["acdc_heldout"] == found["acdc_heldout"]


def test_datasets_without_a_training_folder(tmp_path):
    acdc = tmp_path / "acdc"
    for i in (4, 5, 20):
        (acdc / f"patient{i:03d}").mkdir(parents=True)
    assert datasets(acdc, tmp_path / "none") == {"acdc_heldout": [acdc / "patient005", acdc / "patient020"]}
    assert datasets(tmp_path / "empty", tmp_path / "none") == {}  # empty lists are dropped


# -- generated_section ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(routing_bundle):
    from cmrsdk.evaluation import evaluate, ground_truth_regions
    from cmrsdk.pipeline import Pipeline
    from cmrsdk.synth import synthetic_study

    methods = {
        "baseline": Pipeline(routing_bundle, mode="baseline"),
        "sampling_low": Pipeline(routing_bundle, mode="baseline"),
        "sampling_high": Pipeline(routing_bundle, mode="baseline"),
        "routed": Pipeline(routing_bundle, mode="routed"),
        "oracle": Pipeline(routing_bundle, mode="routed", regions_from="caller"),
    }
    studies = [(f"patient{5 * s:03d}", synthetic_study(seed=s)) for s in (1, 2)]
    return evaluate(methods, studies, region_sources={"oracle": ground_truth_regions}, progress=False)


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the Markdown table that follows ``heading``."""
    lines = text[text.index(heading) :].split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_generated_section_end_to_end(tmp_path, evaluation):
    docs = tmp_path / "docs"
    out = docs / "results" / "paper"
    summary = [
        {
            "run": "unet_baseline",
            "iterations": 1000,
            "s_per_iteration": 0.6,
            "validation": "0.930 / 0.835 / 0.860",
            "weights": "yes",
        },
        {
            "run": "classifier_resnet18",
            "iterations": 300,
            "s_per_iteration": 0.2,
            "validation": "accuracy 0.900, precision 0.880, recall 0.800",
            "weights": "yes",
            "val_recall": 0.8,
        },
    ]
    text = generated_section(summary, "classifier_x", {"acdc_heldout": evaluation}, {"acdc_heldout": []}, out, docs)

    assert text.startswith(BEGIN + "\n") and text.endswith("\n" + END)
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "| unet_baseline | 1000 | 0.60 | 0.930 / 0.835 / 0.860 | yes |" in text
    assert "val_recall" not in text  # not one of the summary's columns
    assert "**classifier_x**" in text
    assert "### held-out ACDC: 2 subjects, ED and ES" in text
    assert "#### Table 1:" in text and "#### Table 2:" in text and "#### Table 3:" in text

    table1 = _table_rows(text, "#### Table 1:")
    assert [r[0] for r in table1] == [
        m for m in ("baseline", "sampling_low", "sampling_high", "routed", "oracle") for _ in range(3)
    ] + ["paper: nnU-Net baseline"] * 3
    cells = {(r[0], r[1]): r[2:] for r in table1}
    assert cells[("paper: nnU-Net baseline", "LVBP")] == ["94.42 (7.76)", "94.28 (6.87)", "82.86* (23.47)"]
    # the baseline answers background everywhere: Dice 0 wherever the LV blood pool is
    assert cells[("baseline", "LVBP")] == ["0.00 (0.00)"] * 3
    assert cells[("sampling_high", "LVM")] == cells[("baseline", "LVM")]
    # the oracle routes middle slices to the LVM model: LVM found there only, LVBP only at the base
    oracle_lvm = [float(c.split()[0].rstrip("*")) for c in cells[("oracle", "LVM")]]
    oracle_lvbp = [float(c.split()[0].rstrip("*")) for c in cells[("oracle", "LVBP")]]
    assert oracle_lvm[0] == 0.0 and oracle_lvm[1] > 5.0 and oracle_lvm[2] == 0.0
    assert oracle_lvbp[0] > 5.0 and oracle_lvbp[1] == 0.0

    table3 = _table_rows(text, "#### Table 3:")
    assert [r[0] for r in table3] == [
        "sampling_low",
        "sampling_high",
        "routed",
        "oracle",
        "paper: batch sampling (high)",
        "paper: classification + segmentation",
    ]
    assert table3[0][1:6] == ["+0.00 (+0.00)"] * 5  # the same model as the baseline
    assert table3[5][1:] == [
        "-0.46 (-0.08)",
        "0.51 (3.36)",
        "1.88* (9.34)",
        "7.60* (9.19)",
        "-1.37* (-0.78)",
        "5.74* (6.87)",
    ]
    assert float(table3[3][1].split()[0].rstrip("*")) > 5.0  # oracle LVBP at the base gains over background

    # links relative to docs/
    assert "![Dice along the heart](results/paper/acdc_heldout/figure2_paper.png)" in text
    assert "`results/paper/acdc_heldout/report.md`" in text
    assert str(tmp_path) not in text

    agreement = _table_rows(text, "#### Volumes and EF")
    assert [r[0] for r in agreement] == ["baseline", "sampling_low", "sampling_high", "routed", "oracle"]


def test_generated_section_table2_and_outside_docs(tmp_path, evaluation, predictions):
    table2 = stored_classifier_table(predictions, "acdc/")
    out = tmp_path / "elsewhere"
    text = generated_section(
        [], "classifier_resnet18", {"acdc_heldout": evaluation}, {"acdc_heldout": table2}, out, tmp_path / "docs"
    )
    rows = _table_rows(text, "#### Table 2:")
    assert [r[0] for r in rows] == ["alexnet", "resnet18"]
    assert rows[0][1:3] == ["40.00", "40.00"] and rows[1][1:3] == ["100.00", "100.00"]
    assert rows[0][-1] == "2,0,0,0 / 0,0,2,0 / 0,4,0,0 / 0,0,0,2"
    # an output outside docs/ is linked by its full path
    assert f"![Dice along the heart]({out}/acdc_heldout/figure2_paper.png)" in text


def test_a_bundle_is_reused_only_while_it_holds_the_chosen_runs(tmp_path: Path) -> None:
    import json
    import os

    from export.experiment import _bundle_is_current

    runs = tmp_path / "runs"
    for run in ("unet_baseline", "classifier_densenet121", "classifier_resnet18"):
        (runs / run).mkdir(parents=True)
        (runs / run / "model.pt").write_bytes(b"w")
        os.utime(runs / run / "model.pt", (1_000_000, 1_000_000))
    bundle = tmp_path / "bundle"
    bundle.mkdir()

    def entry(run: str) -> dict:
        return {"training": {"config": {"experiment": {"name": run}}, "checkpoint": f"{runs / run / 'model.pt'}"}}

    (bundle / "manifest.json").write_text(
        json.dumps({"models": {"baseline": entry("unet_baseline"), "classifier": entry("classifier_densenet121")}})
    )
    os.utime(bundle / "manifest.json", (2_000_000, 2_000_000))  # built after the weights
    wanted = {"baseline": "unet_baseline", "classifier": "classifier_densenet121"}
    assert _bundle_is_current(bundle, wanted, runs)
    assert not _bundle_is_current(
        bundle, {**wanted, "classifier": "classifier_resnet18"}, runs
    )  # another classifier chosen
    assert not _bundle_is_current(bundle, {**wanted, "apex": "unet_baseline"}, runs)  # a role the bundle lacks
    os.utime(runs / "unet_baseline" / "model.pt", (3_000_000, 3_000_000))  # retrained after the bundle was built
    assert not _bundle_is_current(bundle, wanted, runs)
    assert not _bundle_is_current(tmp_path / "missing", wanted, runs)


_TINY_UNET = """
[experiment]
name = "unet_tiny"
task = "segmentation"
[data]
source = "synthetic"
size = 128
synthetic_slices = 16
[model]
name = "unet"
kwargs = { features = [4, 8], deep_supervision = true }
[train]
iterations = 1
batch_size = 2
patch = 128
checkpoint_every = 1
val_every = 1
val_max_slices = 4
threads = 1
"""

_TINY_CLASSIFIER = """
[experiment]
name = "classifier_tiny"
task = "classification"
[data]
source = "synthetic"
size = 128
synthetic_slices = 16
[model]
name = "shufflenet_v2"
kwargs = { width = 0.5, input_size = 64 }
[train]
iterations = 1
batch_size = 4
optimizer = "adam"
lr = 1e-3
checkpoint_every = 1
val_every = 1
threads = 1
"""


def test_the_documented_command_from_runs_to_results_md(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    """`python -m export.experiment` end to end: tiny runs, one real ACDC patient, RESULTS.md written.

    One tiny U-Net stands in for all six, so its eight models are two networks: each exported
    once (`export.reuse`), the other six copies checked by their bundle's parity runs."""
    import shutil

    import export.bundle
    from cmrsdk.bundle import load_bundle
    from export.experiment import BEGIN, END, UNETS
    from export.experiment import main as experiment_main
    from export.train import load_config, train

    written: list[str] = []
    write = export.bundle._export_artifacts
    monkeypatch.setattr(
        export.bundle, "_export_artifacts", lambda model, name, *rest: written.append(name) or write(model, name, *rest)
    )

    runs = tmp_path / "runs"
    trained = {}
    for name, text in (("unet", _TINY_UNET), ("classifier", _TINY_CLASSIFIER)):
        config = tmp_path / f"{name}.toml"
        config.write_text(text)
        trained[name] = Path(train(load_config(config), out=tmp_path / name, progress=False)["checkpoint"])
    for run in UNETS:  # one tiny U-Net stands in for each of the six (the command only needs their files)
        (runs / run).mkdir(parents=True)
        shutil.copy(trained["unet"], runs / run / "last.pt")
        shutil.copy(trained["unet"].parent / "log.csv", runs / run / "log.csv")
    (runs / "classifier_densenet121").mkdir()
    shutil.copy(trained["classifier"], runs / "classifier_densenet121" / "last.pt")
    shutil.copy(trained["classifier"].parent / "log.csv", runs / "classifier_densenet121" / "log.csv")
    acdc = tmp_path / "acdc" / "training"
    acdc.mkdir(parents=True)
    (acdc / "patient005").symlink_to(shared_data / "acdc" / "training" / "patient005")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "RESULTS.md").write_text("# by hand\n\nkept\n")

    assert (
        experiment_main(
            [
                "--runs",
                str(runs),
                "--acdc",
                str(tmp_path / "acdc"),
                "--mnms",
                str(tmp_path / "none"),
                "--out",
                str(docs / "results"),
                "--results-md",
                str(docs / "RESULTS.md"),
            ]
        )
        == 0
    )

    for bundle in ("baseline", "sampling_low", "sampling_high", "routed"):
        assert (runs / "bundles" / bundle / "manifest.json").is_file()
    assert written == ["baseline", "classifier"]  # the routed bundle's classifier comes last
    routed = load_bundle(runs / "bundles" / "routed")  # every copy's hash verifies
    assert sorted(routed.models) == ["apex", "base", "baseline", "classifier", "middle"]
    records = routed.manifest["models"]
    assert all(p["passed"] for m in records.values() for p in m["parity"])
    onnx = {m: routed.models[m].artifacts["onnx"].path for m in ("baseline", "base", "apex")}
    assert onnx["base"].name == "base.onnx" and onnx["base"].read_bytes() == onnx["baseline"].read_bytes()
    out = docs / "results" / "acdc_heldout"
    for name in ("report.md", "slice_dice.csv", "table3.csv", "figure2.png", "figure2_paper.png"):
        assert (out / name).is_file(), name
    methods = {line.split(",")[0] for line in (out / "slice_dice.csv").read_text().splitlines()[1:]}
    assert methods == {"baseline", "sampling_low", "sampling_high", "routed", "oracle"}  # no stored predictions here
    text = (docs / "RESULTS.md").read_text()
    assert text.startswith("# by hand\n\nkept\n") and text.count(BEGIN) == 1 and text.count(END) == 1
    assert (
        "classifier_densenet121" in text and "![Dice along the heart](results/acdc_heldout/figure2_paper.png)" in text
    )
    assert "held-out ACDC: 1 subjects" in text
