"""Montages of segmented slices as a reader looks at them: zoomed on the heart, radiologically oriented.

Pure numpy for the pixels and Pillow for the text, so a montage costs milliseconds, not the
seconds a matplotlib figure of the same slices costs (the segmentation itself takes a few
hundred milliseconds on a 2-core CPU; a picture of it must not cost more).

- Crop: one square window, in mm, around every labelled pixel of the phases shown (so ED and ES
  tiles share a scale and a place), with a margin; the centre of the field of view when
  nothing is labelled.
- Orientation: of the eight flips and transposes of the slice, the one whose screen-right
  points most towards the patient's left and screen-down most towards posterior-inferior (the
  radiological convention; in a short-axis stack it shows the heart as seen from the apex,
  anterior wall up, septum and RV on the left), found from the stack's affine.
- Drawing: translucent fills and opaque contours per structure, a label "z / region /
  confidence" on each tile, a legend and a 10 mm scale bar. Pixels are palette indices (the
  grey in 60 levels under each structure's fill, then contour and text colours), so that the
  blend is one table look-up and the PNG deflates one byte a pixel: the ED/ES montage costs
  about 4 % of the segmentation it shows (benchmarks/montage_cost.py).
"""

from __future__ import annotations

import io
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import InputError
from .io._atomic import atomic_path
from .labels import LVBP, LVM, NON_CARDIAC, REGION_NAMES, RVBP
from .layout import Orientation, display_orientation

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from .pipeline import StudySegmentation

__all__ = [
    "Orientation",
    "LABEL_RGB",
    "LABEL_TITLES",
    "display_orientation",
    "heart_window",
    "phase_tiles",
    "cardiac_slices",
    "slice_caption",
    "compose_montage",
    "study_montage",
    "study_montage_png",
    "montage_drawing_ms",
    "encode_png",
    "save_png",
    "save_png_bytes",
]

#: colour of each structure (RGB, 0-255): LVBP red, LVM green, RVBP blue (the ACDC figures' habit).
LABEL_RGB: dict[int, tuple[int, int, int]] = {LVBP: (240, 60, 45), LVM: (50, 205, 70), RVBP: (60, 130, 245)}
#: what the legend calls each structure.
LABEL_TITLES: dict[int, str] = {LVBP: "LV blood pool", LVM: "LV myocardium", RVBP: "RV blood pool"}
_FILL_ALPHA = 0.22
# Montages are drawn as palette indices, not RGB: one byte a pixel makes the blend a table
# look-up and the PNG a third of the bytes to deflate (the PNG was half the drawing's cost).
# Indices: 60 grey levels for each of background, LVBP, LVM, RVBP (the grey under that
# structure's translucent fill), then the three contour colours, then the text inks.
_GREY_LEVELS = 60
_EDGE_INDEX = 4 * _GREY_LEVELS  # + code - 1: the contour of LVBP, LVM, RVBP
_INK = {"white": 243, "caption": 244, "legend": 245, "note": 246, "black": 247}
_INK_RGB = {
    "white": (255, 255, 255),
    "caption": (255, 230, 120),
    "legend": (230, 230, 230),
    "note": (170, 170, 170),
    "black": (0, 0, 0),
}


def heart_window(
    labels: Sequence[np.ndarray], spacing_yx: tuple[float, float], *, margin_mm: float = 20.0, min_side_mm: float = 90.0
) -> tuple[float, float, float]:
    """A square window around the heart: (centre row, centre column) in pixels and side in mm.

    Parameters
    ----------
    labels : uint8 (Z, Y, X) label maps on one grid (the phases to show).
    spacing_yx : (dy, dx) in mm.
    margin_mm : space kept around the labelled pixels.
    min_side_mm : the smallest side, so that a small apex is not blown up to fill the tile.
    """
    dy, dx = spacing_yx
    shape = labels[0].shape
    rows = np.zeros(shape[1], bool)
    cols = np.zeros(shape[2], bool)
    for lab in labels:
        # any labelled pixel, on any slice; projections keep this at O(Z*Y*X) without copies
        foreground = lab.reshape(lab.shape[0], shape[1], shape[2]) > 0
        rows |= foreground.any(axis=(0, 2))
        cols |= foreground.any(axis=(0, 1))
    if not rows.any():
        return (shape[1] - 1) / 2, (shape[2] - 1) / 2, max(min_side_mm, 0.6 * min(shape[1] * dy, shape[2] * dx))
    r = np.flatnonzero(rows)
    c = np.flatnonzero(cols)
    side = max((r[-1] - r[0] + 1) * dy, (c[-1] - c[0] + 1) * dx) + 2 * margin_mm
    return (r[0] + r[-1]) / 2, (c[0] + c[-1]) / 2, max(side, min_side_mm)


def _linear_taps(positions: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two taps of linear interpolation at fractional ``positions`` along an axis of ``size`` samples.

    Returns [(index, weight), (index + 1, weight)]: intp indices clipped into the axis, float32
    weights that are 0 where the tap falls outside it (so the image is 0 beyond its edges).
    """
    lower = np.floor(positions).astype(np.intp)
    fraction = (positions - lower).astype(np.float32)
    taps = []
    for index, weight in ((lower, 1.0 - fraction), (lower + 1, fraction)):
        inside = (index >= 0) & (index < size)
        taps.append((np.clip(index, 0, size - 1), np.where(inside, weight, np.float32(0.0))))
    return taps


def _sample(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``images`` (N, Y, X) on the grid rows x cols (fractional pixel indices), 0 outside.

    Returns float32 (N, len(rows), len(cols)).
    """
    # separable: interpolate whole rows of the window's columns, then columns (about half the
    # work of four 2-D gathers; a matrix-product form was slower here, BLAS threads on 2 busy cores)
    (r0, wr0), (r1, wr1) = _linear_taps(np.asarray(rows, np.float64), images.shape[1])
    (c0, wc0), (c1, wc1) = _linear_taps(np.asarray(cols, np.float64), images.shape[2])
    first, last = int(min(c0.min(), c1.min())), int(max(c0.max(), c1.max())) + 1
    window = images[:, :, first:last]
    along_rows = window[:, r0].astype(np.float32, copy=False) * wr0[:, None]
    along_rows += window[:, r1] * wr1[:, None]
    out = along_rows[:, :, c0 - first] * wc0
    out += along_rows[:, :, c1 - first] * wc1
    return out


def _nearest(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Nearest samples of ``labels`` (N, Y, X) on the grid rows x cols, 0 outside."""
    h, w = labels.shape[1:]
    ri = np.rint(rows).astype(np.intp)
    ci = np.rint(cols).astype(np.intp)
    out = labels[:, np.clip(ri, 0, h - 1)[:, None], np.clip(ci, 0, w - 1)[None, :]]  # one gather, no copy between
    out[:, (ri < 0) | (ri >= h), :] = 0
    out[:, :, (ci < 0) | (ci >= w)] = 0
    return out


def _edges(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels of (N, T, T) maps with a 4-neighbour of another label, thickened to two pixels."""
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, :, :-1] |= labels[:, :, :-1] != labels[:, :, 1:]
    edge &= labels > 0
    thick = edge.copy()
    thick[:, 1:] |= edge[:, :-1] & (labels[:, 1:] == labels[:, :-1])
    thick[:, :, 1:] |= edge[:, :, :-1] & (labels[:, :, 1:] == labels[:, :, :-1])
    return thick


def _tile_indices(
    pixels: np.ndarray,
    labels: np.ndarray,
    spacing_yx: tuple[float, float],
    slices: Sequence[int],
    window: tuple[float, float, float],
    orientation: Orientation,
    *,
    tile: int = 160,
    intensity: tuple[float, float] | None = None,
) -> list[np.ndarray]:
    """`phase_tiles` as montage palette indices, uint8 (tile, tile) per slice; `_PALETTE` gives their colours."""
    if tile < 16:
        raise InputError(f"'tile' must be at least 16 pixels, got {tile}")
    if not len(slices):
        return []
    cy, cx, side = window
    dy, dx = spacing_yx
    step = side / tile  # mm per screen pixel
    offsets = (np.arange(tile) + 0.5 - tile / 2) * step
    rows, cols = cy + offsets / dy, cx + offsets / dx
    index = np.asarray(slices, dtype=np.intp)
    grey = _sample(pixels[index], rows, cols)
    if intensity is None:
        # percentiles of a subsample: the same window, a fraction of the sorting
        lo, hi = np.percentile(grey[:, ::3, ::3], (1.0, 99.5))
    else:
        lo, hi = intensity
    scale = (_GREY_LEVELS - 1) / max(float(hi - lo), 1e-6)
    level = np.clip((grey - lo) * scale + 0.5, 0, _GREY_LEVELS - 1).astype(np.uint8)
    lab = _nearest(labels[index], rows, cols)
    lab[lab > RVBP] = 0  # only the canonical structures are drawn
    out = level + lab * np.uint8(_GREY_LEVELS)
    edge = _edges(lab)
    out[edge] = lab[edge] + np.uint8(_EDGE_INDEX - 1)
    return [np.ascontiguousarray(orientation.apply(t)) for t in out]


def _palette() -> np.ndarray:
    """uint8 (256, 3): the RGB colour of every montage palette index (see `_GREY_LEVELS`)."""
    palette = np.zeros((256, 3), np.float64)
    grey = np.linspace(0.0, 255.0, _GREY_LEVELS)[:, None]
    palette[:_GREY_LEVELS] = grey
    for code, rgb in LABEL_RGB.items():
        palette[code * _GREY_LEVELS : (code + 1) * _GREY_LEVELS] = (
            grey * (1 - _FILL_ALPHA) + np.array(rgb) * _FILL_ALPHA
        )
        palette[_EDGE_INDEX + code - 1] = rgb
    for name, index in _INK.items():
        palette[index] = _INK_RGB[name]
    return np.rint(palette).astype(np.uint8)


_PALETTE = _palette()


def phase_tiles(
    pixels: np.ndarray,
    labels: np.ndarray,
    spacing_yx: tuple[float, float],
    slices: Sequence[int],
    window: tuple[float, float, float],
    orientation: Orientation,
    *,
    tile: int = 160,
    intensity: tuple[float, float] | None = None,
) -> list[np.ndarray]:
    """One RGB tile per slice: the window resampled to ``tile`` pixels a side, structures drawn on it.

    Parameters
    ----------
    pixels : float32 (Z, Y, X) intensities.
    labels : uint8 (Z, Y, X) canonical labels on the same grid.
    spacing_yx : (dy, dx) in mm.
    slices : indices into Z to draw.
    window : (centre row, centre column) in pixels and side in mm, from `heart_window`.
    orientation : from `display_orientation`.
    tile : side of each tile in screen pixels.
    intensity : (low, high) display window; None takes the 1st and 99.5th percentiles inside the window.

    Returns
    -------
    uint8 (tile, tile, 3) arrays, in the order of ``slices``; the grey is shown in 60 levels.
    """
    return [
        _PALETTE[t]
        for t in _tile_indices(pixels, labels, spacing_yx, slices, window, orientation, tile=tile, intensity=intensity)
    ]


def _font(size: int | None):
    """Pillow's built-in font at ``size`` pixels; None: its bitmap font (rendered several times faster, for the many captions)."""
    from PIL import ImageFont

    if size is None:
        bitmap = getattr(ImageFont, "load_default_imagefont", None)  # Pillow >= 10.1
        return bitmap() if bitmap else ImageFont.load_default()
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font has one size
        return ImageFont.load_default()


def compose_montage(
    rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str]]],
    *,
    columns: int = 6,
    mm_per_pixel: float | None = None,
    note: str = "",
) -> np.ndarray:
    """Tiles laid out in a grid under a heading per phase, with a legend and a scale bar.

    Parameters
    ----------
    rows : (heading, tiles, captions) per phase; tiles are uint8 (T, T, 3), one caption each.
    columns : tiles per line.
    mm_per_pixel : scale of the tiles, for a 10 mm bar in the legend; None draws no bar.
    note : a line of text under the legend (orientation, window).

    Returns
    -------
    uint8 (H, W, 3) image.
    """
    return np.asarray(_compose(rows, columns=columns, mm_per_pixel=mm_per_pixel, note=note, indexed=False))


def _compose(
    rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str]]],
    *,
    columns: int,
    mm_per_pixel: float | None,
    note: str,
    indexed: bool,
) -> PILImage:
    """`compose_montage` as a Pillow image: "RGB" from RGB tiles, or "P" (`_PALETTE`) from index tiles."""
    from PIL import Image, ImageDraw

    def ink(name: str) -> int | tuple[int, int, int]:
        return _INK[name] if indexed else _INK_RGB[name]

    def structure(code: int) -> int | tuple[int, int, int]:
        return _EDGE_INDEX + code - 1 if indexed else LABEL_RGB[code]

    tile = next((t[0].shape[0] for _, t, _ in rows if len(t)), 64)
    gap, head, foot = 4, 22, 44 if note else 26
    columns = max(1, min(columns, max((len(t) for _, t, _ in rows), default=1)))
    lines = [max(1, -(-len(t) // columns)) for _, t, _ in rows]
    width = columns * (tile + gap) + gap
    height = sum(head + n * (tile + gap) for n in lines) + foot
    canvas = np.full((height, width), _INK["black"], np.uint8) if indexed else np.zeros((height, width, 3), np.uint8)
    y = 0
    placements = []
    for (heading, tiles, captions), n in zip(rows, lines):
        placements.append(("head", heading, gap, y + 4))
        y += head
        for i, (t, caption) in enumerate(zip(tiles, captions)):
            ty, tx = y + (i // columns) * (tile + gap), gap + (i % columns) * (tile + gap)
            canvas[ty : ty + tile, tx : tx + tile] = t
            placements.append(("caption", caption, tx + 3, ty + 2))
        y += n * (tile + gap)
    image = Image.fromarray(canvas, "P" if indexed else "RGB")
    if indexed:
        image.putpalette(_PALETTE.tobytes())
    draw = ImageDraw.Draw(image)
    heading_font, small, caption_font = _font(14), _font(11), _font(None)
    for kind, text, x, ty in placements:
        if kind == "head":
            draw.text((x, ty), text, fill=ink("white"), font=heading_font)
        else:
            # a dark box behind the caption keeps it legible over bright fat and blood
            box = draw.textbbox((x, ty), text, font=caption_font)
            draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=ink("black"))
            draw.text((x, ty), text, fill=ink("caption"), font=caption_font)
    x, ly = gap, y + 6
    for code, title in LABEL_TITLES.items():
        draw.rectangle((x, ly + 2, x + 11, ly + 13), fill=structure(code), outline=ink("white"))
        draw.text((x + 16, ly), title, fill=ink("legend"), font=small)
        x = draw.textbbox((x + 16, ly), title, font=small)[2] + 14
    if mm_per_pixel:
        bar = int(round(10.0 / mm_per_pixel))
        if x + bar + 50 < width:
            draw.rectangle((x, ly + 6, x + bar, ly + 8), fill=ink("white"))
            draw.text((x + bar + 5, ly), "10 mm", fill=ink("legend"), font=small)
    if note:
        draw.text((gap, ly + 18), note, fill=ink("note"), font=small)
    return image


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) image (the fastest zlib level: on MR texture it compresses within 10 % of the default, in a third of the time)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (uint8 (H, W, 3)) as PNG atomically; returns the path."""
    return save_png_bytes(path, encode_png(image))


def save_png_bytes(path: str | Path, data: bytes) -> Path:
    """Write encoded PNG ``data`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def slice_caption(z: int, region: int | None, confidence: float | None) -> str:
    """'z 3 / middle / 0.97' (the slice's region and the classifier's confidence where routed)."""
    if region is None:
        return f"z {z}"
    text = f"z {z} / {REGION_NAMES.get(int(region), '?')}"
    return text if confidence is None else f"{text} / {confidence:.2f}"


def cardiac_slices(labels: np.ndarray, regions: np.ndarray | None, max_slices: int) -> list[int]:
    """The slices worth showing: those labelled or routed as cardiac, one more at each end, at most ``max_slices``."""
    z = labels.shape[0]
    shown = labels.reshape(z, -1).any(1)
    if regions is not None:
        shown |= np.asarray(regions) != NON_CARDIAC
    index = np.flatnonzero(shown)
    if len(index) == 0:
        index = np.arange(z)
    else:
        index = np.arange(max(index[0] - 1, 0), min(index[-1] + 2, z))
    if len(index) > max_slices:
        index = index[np.unique(np.linspace(0, len(index) - 1, max_slices).round().astype(int))]
    return [int(k) for k in index]


def study_montage(result: StudySegmentation, *, max_slices: int = 12, tile: int = 144, columns: int = 6) -> np.ndarray:
    """The ED and ES slices of a segmented study in one montage, ED above ES.

    Parameters
    ----------
    result : the segmented study (`cmrsdk.pipeline.StudySegmentation`).
    max_slices : at most this many slices per phase, evenly spread over the heart.
    tile : side of each slice's tile in screen pixels; the image is at most
        ``columns * (tile + 4) + 4`` wide and ``2 * ceil(max_slices / columns)`` tiles high.
    columns : tiles per line.

    Returns
    -------
    uint8 (H, W, 3) RGB image (greys in 60 levels, as in ``overlay.png``).
    """
    return np.asarray(_study_montage_image(result, max_slices=max_slices, tile=tile, columns=columns).convert("RGB"))


def _study_montage_image(result: StudySegmentation, *, max_slices: int, tile: int, columns: int) -> PILImage:
    """`study_montage` as a Pillow "P" image (palette `_PALETTE`), the form that is encoded."""
    same_grid = result.ed.labels.shape == result.es.labels.shape
    shared = heart_window([result.ed.labels, result.es.labels], result.ed.stack.spacing[1:]) if same_grid else None
    rows = []
    scale = None
    for name, index, seg in (("ED", result.ed_index, result.ed), ("ES", result.es_index, result.es)):
        stack = seg.stack
        spacing = stack.spacing[1:]
        window = shared or heart_window([seg.labels], spacing)
        slices = cardiac_slices(seg.labels, seg.regions, max_slices)
        tiles = _tile_indices(
            stack.pixels, seg.labels, spacing, slices, window, display_orientation(stack.affine), tile=tile
        )
        confidence = seg.region_confidence
        captions = [
            slice_caption(
                k,
                None if seg.regions is None else int(seg.regions[k]),
                None if confidence is None else float(confidence[k]),
            )
            for k in slices
        ]
        rows.append((f"{name} (phase {index}): slices in stored order", tiles, captions))
        scale = scale or window[2] / tile
    return _compose(
        rows,
        columns=columns,
        mm_per_pixel=scale if shared else None,
        note="radiological view from the affine: the patient's left on the image's right",
        indexed=True,
    )


# overlay.png and report.html show the same picture: draw and encode it once per result
_PNG_CACHE: weakref.WeakKeyDictionary[StudySegmentation, tuple[tuple[int, int, int], bytes, float]] = (
    weakref.WeakKeyDictionary()
)


def study_montage_png(result: StudySegmentation, *, max_slices: int = 12, tile: int = 144, columns: int = 6) -> bytes:
    """`study_montage` as PNG bytes, drawn once per result and parameters (kept while ``result`` lives)."""
    key = (max_slices, tile, columns)
    cached = _PNG_CACHE.get(result)
    if cached is not None and cached[0] == key:
        return cached[1]
    t0 = time.perf_counter()
    buffer = io.BytesIO()
    # the palette image, deflated at the fastest level (PNG's filters are off for palette images)
    _study_montage_image(result, max_slices=max_slices, tile=tile, columns=columns).save(
        buffer, format="PNG", compress_level=1
    )
    data = buffer.getvalue()
    _PNG_CACHE[result] = (key, data, (time.perf_counter() - t0) * 1000.0)
    return data


def montage_drawing_ms(result: StudySegmentation) -> float | None:
    """Milliseconds the last `study_montage_png` of ``result`` took to draw and encode; None if not drawn."""
    cached = _PNG_CACHE.get(result)
    return None if cached is None else cached[2]
