"""A zero border does not change what a study measures (export/README.md, stage 44): where a
quarter or more of a stack's pixels are exact zeros, the normalisation's statistics skip them."""

from __future__ import annotations

import dataclasses

import numpy as np


def _padded(stack, px: int):
    """The same anatomy at the same scanner positions inside ``px`` zero pixels on every side."""
    affine = stack.affine.copy()
    affine[:3, 3] -= (stack.affine[:3, 1] + stack.affine[:3, 2]) * px
    pad = ((0, 0), (px, px), (px, px))
    return dataclasses.replace(stack, pixels=np.pad(stack.pixels, pad), labels=None, affine=affine)


def test_a_zero_border_leaves_the_lv_mass(shared_data):
    """M&Ms B5F8L9 (1.4 % zeros) inside 384 zero pixels a side (61 % zeros): LV mass 107.48 ->
    90.13 g while the border pulled the statistics; 109.46 g with the rule."""
    from cmrsdk import DEMO_BUNDLE, Pipeline, read_study
    from cmrsdk.preprocess import statistics_mask

    study = read_study(shared_data / "mnms" / "B5F8L9")
    wide = dataclasses.replace(study, phases=tuple(_padded(s, 384) for s in study.phases))
    ed = wide.phases[study.ed_index]
    assert statistics_mask(study.ed.pixels, study.ed.spacing[1:], study.ed.pixels.shape[1:]) is None
    assert statistics_mask(ed.pixels, ed.spacing[1:], ed.pixels.shape[1:]) is not None
    pipeline = Pipeline(DEMO_BUNDLE, threads=1)
    plain, padded = pipeline.segment_study(study).measures, pipeline.segment_study(wide).measures
    assert abs(padded.lv_mass_g - plain.lv_mass_g) < 2.5
    assert abs(padded.lvedv_ml - plain.lvedv_ml) < 2.5 and abs(padded.lvef_pct - plain.lvef_pct) < 1.0
