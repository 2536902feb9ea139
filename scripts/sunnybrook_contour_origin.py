"""Where Sunnybrook's manual contours sit on their images: the evidence for `CONTOUR_ORIGIN`.

The contour files give ``x y`` pixel coordinates without saying where the first pixel's centre
is. This moves every contour by d pixels along both axes (d = 0: as `cmrsdk.io.sunnybrook`
reads them, one-based; d = +1: as if they were zero-based) and prints, per d:

- edge: the image's gradient magnitude (Gaussian, sigma 1 pixel) along the i-contours, as a
  fraction of each contour's best d, averaged: the endocardium is drawn on the blood pool's edge;
- blood: the mean intensity inside the i-contours, likewise: the blood pool is the bright part;
- with ``--bundle``: the mean Dice (%) of the bundle's routed masks (as `cmrsdk evaluate` makes
  them, `segment_contoured`) against the moved contours (LVBP against i-contours, LVBP + LVM
  against o-contours).

The first two use no model. Usage (about a minute with a bundle on 2 cores):

    python scripts/sunnybrook_contour_origin.py [../shared/data/sunnybrook] [--bundle cmrsdk/demo/bundle]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from cmrsdk.evaluation_sunnybrook import segment_contoured, sunnybrook_cases
from cmrsdk.io import read_sunnybrook
from cmrsdk.io.sunnybrook import _CONTOUR_NAME, polygon_mask, read_contour
from cmrsdk.labels import LVBP, LVM

SHIFTS = np.round(np.arange(-1.5, 2.01, 0.25), 2)


def _along(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mean of float (Y, X) ``image`` along the closed polygon ``points`` (N, 2) (x, y), sampled
    five times per edge (bilinear), for every shift in `SHIFTS`: float (len(SHIFTS),)."""
    step = np.roll(points, -1, axis=0) - points
    dense = np.concatenate([points + step * t for t in np.linspace(0.0, 1.0, 5, endpoint=False)])
    return np.array(
        [ndimage.map_coordinates(image, [dense[:, 1] + d, dense[:, 0] + d], order=1).mean() for d in SHIFTS]
    )


def measure(root: Path, bundle: str | None) -> dict[str, np.ndarray]:
    """Per measure, float (contours, len(SHIFTS)): edge and blood per i-contour, and with a bundle
    the Dice of its masks per contour (i and o)."""
    pipeline = None
    if bundle is not None:
        from cmrsdk.pipeline import Pipeline

        pipeline = Pipeline(bundle)
    rows: dict[str, list[np.ndarray]] = {"edge": [], "blood": [], "dice": []}
    for _, series, contours in sunnybrook_cases(root):
        study = read_sunnybrook(series, contours)
        where = {int(Path(f).stem): (t, z) for t, s in enumerate(study.phases) for z, f in enumerate(s.source_files)}
        masks = None
        if pipeline is not None:  # as `cmrsdk evaluate` segments them
            masks = {t: result.labels for t, result in segment_contoured(pipeline, study).items()}
        for file in sorted(Path(contours).glob("*-contours/*contour-manual.txt")):
            match = _CONTOUR_NAME.search(file.name)
            if match is None:
                continue
            t, z = where[int(match.group(1))]
            image = study.phases[t].pixels[z].astype(np.float64)
            points = read_contour(file)
            inner = match.group(2) == "i"
            if inner:
                rows["edge"].append(_along(ndimage.gaussian_gradient_magnitude(image, 1.0), points))
                rows["blood"].append(np.array([image[polygon_mask(points + d, image.shape)].mean() for d in SHIFTS]))
            if masks is not None:
                drawn = masks[t][z] == LVBP if inner else np.isin(masks[t][z], (LVBP, LVM))
                truth = [polygon_mask(points + d, image.shape) for d in SHIFTS]
                rows["dice"].append(np.array([2 * (m & drawn).sum() / max(m.sum() + drawn.sum(), 1) for m in truth]))
    return {k: np.array(v) for k, v in rows.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="../shared/data/sunnybrook", type=Path)
    parser.add_argument("--bundle", default=None, help="also score this bundle's routed masks against moved contours")
    args = parser.parse_args()
    found = measure(args.root, args.bundle)
    print("| d (pixels) | " + " | ".join(f"{d:+.2f}" for d in SHIFTS) + " |")
    print("|" + "---|" * (len(SHIFTS) + 1))
    peaks = []
    for name, values in found.items():
        if name == "dice":
            mean = 100 * values.mean(axis=0)
            print(f"| {name} (%, {len(values)} contours) | " + " | ".join(f"{v:.2f}" for v in mean) + " |")
        else:
            mean = (values / values.max(axis=1, keepdims=True)).mean(axis=0)
            print(f"| {name} ({len(values)} i-contours) | " + " | ".join(f"{v:.3f}" for v in mean) + " |")
        best = np.median(SHIFTS[np.argmax(values, axis=1)])
        peaks.append(f"- {name}: the mean peaks at d = {SHIFTS[np.argmax(mean)]:+.2f}; per contour, median {best:+.2f}")
    print("\n" + "\n".join(peaks))


if __name__ == "__main__":
    main()
