"""Bundle format versions and removed arguments across cmrsdk releases (runs/redteam41, findings 3
and 7): a manifest whose labels or regions are in another order than cmrsdk's is format 2, which
cmrsdk before 0.14.0 refuses instead of swapping the LV and RV; everything else stays format 1,
which every cmrsdk reads; ``Pipeline(region_source=...)`` (0.1.0) points to its replacement.

The refusal by a real old version is checked outside the suite (git worktrees of 0.10.0 and
0.12.0, runs/redteam41/repro/04_bundle_reordered_labels_downgrade.sh): their loader reads format 1
only and says "'format_version' is 2, this cmrsdk reads (1,)".
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from cmrsdk import DEMO_BUNDLE, Pipeline  # noqa: E402
from cmrsdk.bundle import (  # noqa: E402
    FORMAT_VERSION,
    MANIFEST_NAME,
    SUPPORTED_FORMAT_VERSIONS,
    load_bundle,
    required_format_version,
)
from cmrsdk.errors import BundleError, CmrWarning, InputError  # noqa: E402
from cmrsdk.labels import LABEL_NAMES, NON_CARDIAC, REGION_NAMES  # noqa: E402
from cmrsdk.types import Stack  # noqa: E402
from _bundles import built_once  # noqa: E402

#: ACDC's label order: channel 1 is the RV, channel 3 the LV cavity
ACDC_LABELS = {"0": "background", "1": "RVBP", "2": "LVM", "3": "LVBP"}
#: canonical code k of a model answering in ACDC's order is its channel ACDC_ORDER[k]
ACDC_ORDER = (0, 3, 2, 1)


class IntensitySegmenter(torch.nn.Module):
    """Background near -1, RVBP near 0, LVBP near 1 (min-max normalised to [-1, 1]: the stack's 0,
    0.5 and 1), never LVM; its output
    channels in ``order`` (channel c holds canonical code ``order.index(c)``)."""

    def __init__(self, order: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor([-1.0, 1.0, 9.0, 0.0])[list(order)].view(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x - self.centres) ** 2) * 40.0


def _build(out: Path, order: tuple[int, ...]) -> Path:
    from cmrsdk.bundle import Preprocessing
    from export.bundle import build_bundle

    pre = Preprocessing(target_spacing=(2.0, 2.0), size=(64, 64), normalization="minmax")
    return build_bundle(
        {"baseline": (IntensitySegmenter(order), {"kind": "segmentation"})},
        {NON_CARDIAC: "baseline"},
        pre,
        out,
        formats=("onnx", "torchscript"),
    )


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())


def _write(path: Path, manifest: dict) -> None:
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """``canonical``: the segmenter in cmrsdk's order, as export.bundle writes it. ``acdc``: the same
    segmenter answering in ACDC's order, its manifest saying so and without a version of its own
    (format 1, as written by hand for 0.14.0 to 0.14.7): each test sets the version it checks.
    Built once for the run (`built_once`) and read only: tests that change one take a copy (`_copy`)."""

    def build(root: Path) -> None:
        _build(root / "canonical", (0, 1, 2, 3))
        acdc = _build(root / "acdc", ACDC_ORDER)
        manifest = _manifest(acdc)
        manifest["labels"] = ACDC_LABELS
        _write(acdc, manifest)

    root = built_once(tmp_path_factory, "bundle-versions", build)
    return {"canonical": root / "canonical", "acdc": root / "acdc"}


def _copy(bundles: dict[str, Path], name: str, tmp_path: Path, version: int) -> Path:
    out = Path(shutil.copytree(bundles[name], tmp_path / name))
    manifest = _manifest(out)
    manifest["format_version"] = version
    _write(out, manifest)
    return out


def _stack() -> Stack:
    """An LV disc (intensity 1) and an RV disc (0.5) on 2 mm pixels, the bundle's grid."""
    yy, xx = np.mgrid[:64, :64]
    pixels = np.zeros((3, 64, 64), np.float32)
    pixels[:, (yy - 32) ** 2 + (xx - 22) ** 2 <= 36] = 1.0
    pixels[:, (yy - 32) ** 2 + (xx - 36) ** 2 <= 49] = 0.5  # touching the LV
    return Stack(pixels, (8.0, 2.0, 2.0))


def test_the_versions_this_cmrsdk_reads_and_writes():
    assert SUPPORTED_FORMAT_VERSIONS == (1, 2) and FORMAT_VERSION == 2


def test_the_shipped_bundle_and_exported_ones_stay_format_1(bundles: dict[str, Path]):
    """Format 1 is what every cmrsdk reads: the shipped bundle still loads in 0.10.0."""
    shipped = _manifest(DEMO_BUNDLE)
    assert shipped["format_version"] == 1 and required_format_version(shipped) == 1
    exported = _manifest(bundles["canonical"])
    assert exported["format_version"] == 1 and exported["labels"] == {str(k): v for k, v in LABEL_NAMES.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)
        load_bundle(DEMO_BUNDLE)
        load_bundle(bundles["canonical"])


@pytest.mark.parametrize(
    ("edit", "version"),
    [
        ({}, 1),
        ({"labels": {0: "background", 1: "LVBP", 2: "LVM", 3: "RVBP"}}, 1),  # int codes, same order
        ({"labels": ACDC_LABELS}, 2),
        ({"regions": {"0": "non-cardiac", "1": "apex", "2": "middle", "3": "base"}}, 2),
        ({"labels": {"0": "background", "1": "LV", "2": "MYO", "3": "RV"}}, 2),  # refused at load anyway
    ],
)
def test_labels_or_regions_in_another_order_need_format_2(edit: dict, version: int):
    manifest = {
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "regions": {str(k): v for k, v in REGION_NAMES.items()},
        **edit,
    }
    assert required_format_version(manifest) == version


def test_a_format_2_bundle_in_acdc_order_segments_like_the_canonical_one(bundles: dict[str, Path], tmp_path: Path):
    acdc = _copy(bundles, "acdc", tmp_path, required_format_version(_manifest(bundles["acdc"])))
    assert _manifest(acdc)["format_version"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)  # format 2 in another order: nothing to warn of
        bundle = load_bundle(acdc)
    assert bundle.models["baseline"].output_order == ACDC_ORDER
    assert bundle.labels == LABEL_NAMES
    stack = _stack()
    for backend in ("onnx", "torchscript"):
        ours = Pipeline(bundle, mode="baseline", largest_component=False, backend=backend).segment(stack).labels
        theirs = Pipeline(bundles["canonical"], mode="baseline", largest_component=False, backend=backend)
        np.testing.assert_array_equal(ours, theirs.segment(stack).labels)
        # the bright disc is the LV cavity (1), the grey one the RV (3): not swapped
        assert (ours[:, 32, 22] == 1).all() and (ours[:, 32, 36] == 3).all()
        assert np.count_nonzero(ours == 1) == 3 * 113 and np.count_nonzero(ours == 3) == 3 * 149


def test_format_1_in_another_order_is_read_right_and_warned_of(bundles: dict[str, Path], tmp_path: Path):
    """A format-1 manifest in ACDC's order (README's advice from 0.14.0 to 0.14.7) is read right
    here, but cmrsdk before 0.14.0 would swap LV and RV: the warning says to make it format 2."""
    acdc = _copy(bundles, "acdc", tmp_path, 1)
    with pytest.warns(
        CmrWarning,
        match=r"manifest\.json: 'labels' names cmrsdk's codes in another order, but 'format_version' is 1: cmrsdk "
        r"before 0\.14\.0 reads format 1 with output channel c as code c \(LV and RV swapped, without a word\); "
        r'set "format_version": 2',
    ):
        bundle = load_bundle(acdc)
    assert bundle.models["baseline"].output_order == ACDC_ORDER


@pytest.mark.parametrize("version", [3, 10])
def test_a_newer_format_is_refused_naming_the_versions_read(bundles: dict[str, Path], tmp_path: Path, version: int):
    newer = _copy(bundles, "canonical", tmp_path, version)
    with pytest.raises(
        BundleError,
        match=rf"manifest\.json: 'format_version' is {version}, this cmrsdk reads \(1, 2\) \(written for a newer "
        r"cmrsdk: upgrade cmrsdk to read it\)",
    ):
        load_bundle(newer)


def test_rewriting_a_format_1_bundle_in_another_order_makes_it_format_2(bundles: dict[str, Path], tmp_path: Path):
    """export.quantize rewrites the manifest (export.aoti and the bf16 check the same way): a
    hand-written format-1 manifest in ACDC's order leaves as format 2, every hash verifying;
    one in cmrsdk's order stays format 1."""
    pytest.importorskip("onnxruntime.quantization")
    from cmrsdk.synth import synthetic_study
    from export.quantize import _prepared, quantize_bundle

    check = [("synthetic11", synthetic_study(seed=11))]
    for name, version in (("acdc", 2), ("canonical", 1)):
        path = _copy(bundles, name, tmp_path, 1)
        before = _manifest(path)
        images, labels = _prepared(load_bundle(path) if name == "canonical" else _quiet_load(path), [check[0][1]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CmrWarning)  # the format-1 warning of the bundle as it was
            quantize_bundle(
                path,
                calibration=images[:8],
                calibration_labels=labels[:8],
                check_studies=check,
                max_dice_drop=math.inf,
                threads=1,
                crop_jitter=False,
                log=lambda *a: None,
                method="minmax",
            )
        after = _manifest(path)
        assert after["format_version"] == version, name
        assert "onnx-int8" in after["models"]["baseline"]["artifacts"]
        # nothing else of the old manifest changed but the records quantize adds
        assert {k: v for k, v in after.items() if k not in ("format_version", "models", "quantization")} == {
            k: v for k, v in before.items() if k not in ("format_version", "models", "quantization")
        }
        with warnings.catch_warnings():
            warnings.simplefilter("error", CmrWarning)
            assert load_bundle(path).models["baseline"].output_order == (ACDC_ORDER if name == "acdc" else (0, 1, 2, 3))


def _quiet_load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CmrWarning)
        return load_bundle(path)


# -- finding 7: Pipeline(region_source=...), removed in 0.2.0 ------------------------------------


def test_pipeline_region_source_points_to_its_replacement(bundles: dict[str, Path]):
    from cmrsdk.evaluation import ground_truth_regions

    with pytest.raises(
        InputError,
        match=r"'region_source' is no longer an argument of Pipeline \(removed in 0\.2\.0\), got "
        r"'ground truth': hand the regions in per call, segment\(stack, region_source=\.\.\.\) or "
        r"segment_study\(study, region_source=\.\.\.\), and build the pipeline with regions_from='caller'",
    ):
        Pipeline(bundles["canonical"], region_source=ground_truth_regions)  # type: ignore[arg-type]
    # its sibling removed in the same release, and a misspelt keyword, are refused as before
    with pytest.raises(InputError, match=r"'mode' 'oracle' is no longer a mode"):
        Pipeline(bundles["canonical"], mode="oracle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'region_sorce'"):
        Pipeline(bundles["canonical"], region_sorce=ground_truth_regions)  # type: ignore[call-arg]
    # None, 0.1.0's default, is no source at all: the pipeline is built
    assert Pipeline(bundles["canonical"], region_source=None).mode == "routed"
