"""docs/CONTRACT.md, the bundle's contract for re-implementations, against the code it describes.

Every table row whose first cell is a backticked name is checked:

- ``| `cmrsdk.module.CONSTANT` | value | ... |``: the constant, imported, equals the value (a
  Python literal, backticks optional);
- ``| `manifest.key.key` | value | ... |``: the shipped bundle's manifest holds the value there;
- ``| `cmrsdk.module.function` | `code` | ... |`` (a function, class or method): ``code`` appears
  in its source, or, for compiled code, a behaviour check in `BEHAVIOUR` holds.

So the page cannot drift from the code: change a constant and this file fails until the page
says the new value.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "CONTRACT.md"
MANIFEST = ROOT / "cmrsdk" / "demo" / "bundle" / "manifest.json"

#: a table row naming something: its first cell a backticked cmrsdk or manifest name, and its second
ROW = re.compile(r"^\|\s*`((?:cmrsdk|manifest)\.[\w.]+)`\s*\|\s*(.*?)\s*\|")
#: a constant anywhere on the page: a backticked cmrsdk name whose last part is upper case
CONSTANT = re.compile(r"`(cmrsdk(?:\.\w+)*\.[A-Z][A-Z0-9_]*)`")
#: any backticked dotted cmrsdk name on the page
NAME = re.compile(r"`(cmrsdk(?:\.\w+)+)`")


def _rows(text: str) -> list[tuple[str, str]]:
    """(name, value cell) of every naming row of ``text``."""
    return [(m.group(1), m.group(2)) for line in text.splitlines() if (m := ROW.match(line.strip()))]


def _resolve(dotted: str) -> Any:
    """The object a dotted name gives: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def _literal(cell: str) -> Any:
    return ast.literal_eval(cell.strip().strip("`").strip())


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so that a JSON list and a Python tuple compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_constant(name: str) -> bool:
    return name.startswith("cmrsdk.") and re.fullmatch(r"[A-Z][A-Z0-9_]*", name.rsplit(".", 1)[1]) is not None


def _check_clip_percentiles(cell: str) -> str | None:
    """The robust z-score clips to the percentiles ``cell`` gives ("lower, upper"), by numpy's linear
    rule, then z-scores with the clipped values' mean and population std."""
    from cmrsdk.preprocess import normalize

    lower, upper = (float(v) for v in cell.strip("`").split(","))
    rng = np.random.default_rng(0)
    x = rng.lognormal(0.0, 1.5, 20_011).astype(np.float32)  # heavy tails: each percentile gives other values
    lo, hi = (np.float32(v) for v in np.percentile(x.astype(np.float64), (lower, upper)))
    clipped = np.clip(x, lo, hi).astype(np.float64)
    expected = ((clipped - clipped.mean()) / clipped.std()).astype(np.float32)
    got = normalize(x, "robust_zscore")
    if not np.allclose(got, expected, atol=1e-5):
        return f"robust_zscore does not clip to the {lower}th and {upper}th percentiles"
    return None


#: compiled code (no Python source to search): a behaviour check per name, given the value cell
BEHAVIOUR: dict[str, Callable[[str], str | None]] = {
    "cmrsdk._normalize.robust_zscore": _check_clip_percentiles,
}


def _manifest_value(name: str) -> Any:
    value: Any = json.loads(MANIFEST.read_text())
    for key in name.split(".")[1:]:
        value = value[key]
    return value


def check_row(name: str, cell: str) -> str | None:
    """None where the row holds, else what is wrong."""
    if name.startswith("manifest."):
        expected, actual = _literal(cell), _manifest_value(name)
        return None if _plain(expected) == _plain(actual) else f"manifest has {actual!r}, the page {expected!r}"
    obj = _resolve(name)
    if _is_constant(name):
        expected = _literal(cell)
        return None if _plain(expected) == _plain(obj) else f"the code has {obj!r}, the page {expected!r}"
    if name in BEHAVIOUR:
        return BEHAVIOUR[name](cell)
    code = cell.strip()
    if not (code.startswith("`") and code.endswith("`")):
        return f"the value of a code row must be backticked code, got {cell!r}"
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError):
        return f"{name} has no Python source: add a behaviour check to BEHAVIOUR"
    return None if code.strip("`") in source else f"{code} is not in the source of {name}"


TEXT = DOC.read_text(encoding="utf-8")
ROWS = _rows(TEXT)


def test_the_page_has_its_rows() -> None:
    names = {name for name, _ in ROWS}
    for needed in (
        "cmrsdk.systole.SYSTOLIC_BASE_RATIO",
        "cmrsdk.heart.MIN_HEART_PIXELS",
        "cmrsdk.pipeline.MIN_HEART_CONFIDENCE",
        "cmrsdk.preprocess.ZERO_BACKGROUND_FRACTION",
        "cmrsdk.preprocess.BRIGHT_ARTEFACT_RATIO",
        "cmrsdk._normalize.robust_zscore",
        "manifest.preprocessing.heart_crop",
    ):
        assert needed in names, f"docs/CONTRACT.md has no row for {needed}"


@pytest.mark.parametrize(("name", "cell"), ROWS, ids=[f"{n}={c}" for n, c in ROWS])
def test_row_holds(name: str, cell: str) -> None:
    problem = check_row(name, cell)
    assert problem is None, f"docs/CONTRACT.md row `{name}` | {cell}: {problem}"


def test_every_constant_named_is_importable_and_tabled() -> None:
    tabled = {name for name, _ in ROWS}
    for name in sorted(set(CONSTANT.findall(TEXT))):
        _resolve(name)  # raises where it is gone
        assert name in tabled, f"docs/CONTRACT.md names {name} but gives it no row of its value"


def test_every_cmrsdk_name_resolves() -> None:
    for name in sorted(set(NAME.findall(TEXT))):
        try:
            _resolve(name)
        except (ModuleNotFoundError, AttributeError) as exc:
            pytest.fail(f"docs/CONTRACT.md names {name}, which does not exist ({exc})")


def test_a_changed_value_is_caught() -> None:
    """The checks bite: the page with one constant, one literal or one percentile changed fails."""
    assert check_row("cmrsdk.systole.SYSTOLIC_BASE_RATIO", "0.5") is not None
    assert check_row("cmrsdk.heart.MIN_HEART_PIXELS", "`40`") is not None
    assert check_row("manifest.preprocessing.heart_crop", "[96, 96]") is not None
    assert check_row("cmrsdk.heart_size.feasible_scale", "`abs(scale - 1.0) < 0.1`") is not None
    assert check_row("cmrsdk._normalize.robust_zscore", "`1.0, 99.0`") is not None


@pytest.mark.parametrize(
    "case, ed_name, es_name",
    [
        ("acdc/training/patient005", "patient005_frame01.nii.gz", "patient005_frame13.nii.gz"),  # ES basal RV dropped
        ("mnms/G1K1V3", "G1K1V3_sa_ED.nii.gz", "G1K1V3_sa_ES.nii.gz"),  # a zero background: statistics skip it
    ],
)
def test_the_page_followed_without_cmrsdk_gives_its_masks(
    shared_data: Path, case: str, ed_name: str, es_name: str
) -> None:
    """examples/python/reimplement_contract.py (nibabel, numpy, scipy, ONNX Runtime; written from this
    page) and `cmrsdk.Pipeline` on ONNX Runtime: the same ED and ES masks, voxel for voxel."""
    import importlib.util

    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.io import read_study

    spec = importlib.util.spec_from_file_location(
        "reimplement_contract", ROOT / "examples" / "python" / "reimplement_contract.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    folder = shared_data / case
    ed, es, recorded = example.segment_study(example.Net(), folder / ed_name, folder / es_name)
    result = Pipeline(DEMO_BUNDLE, backend="onnx").segment_study(read_study(folder))
    for phase, mine, theirs in (("ED", ed, result.ed), ("ES", es, result.es)):
        assert mine.any()
        np.testing.assert_array_equal(mine, theirs.labels, err_msg=phase)
        window = theirs.provenance["network_window"]
        assert recorded[phase] == {k: window[k] for k in ("resampled_shape", "offset_yx", "size")}
    assert recorded["dropped"] == result.es.provenance.get("systolic_base_rv_dropped_slice")
