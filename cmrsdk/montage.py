"""Montages of segmented slices as a reader looks at them: zoomed on the heart, radiologically oriented.

Pure numpy for the pixels and Pillow for the text, so a montage costs milliseconds, not the
seconds a matplotlib figure of the same slices costs (the segmentation itself takes a few
hundred milliseconds on a 2-core CPU; a picture of it must not cost more).

- Rows: one per phase shown: "ED" and "ES" for a study of two phases, "ED (frame N)" and
  "ES (frame N)" for a cine (the page's names), one row "Single phase" for a one-phase input.
- Slices: the same slice positions for every phase on one grid (those labelled or routed as
  cardiac in any phase, one more at each end, at most ``max_slices`` evenly spread), ordered
  base -> apex (the direction from the scanner geometry, else the slices' regions, else the
  masks' areas: `cmrsdk.regions`); the heading says how many of the stack's slices are shown.
- Crop: one square window, in mm, around every labelled pixel of the phases shown (so ED and ES
  tiles share a scale and a place), with a margin; the centre of the field of view when
  nothing is labelled.
- Orientation: of the eight flips and transposes of the slice, the one whose screen-right
  points most towards the patient's left and screen-down most towards posterior-inferior (the
  radiological convention; in a short-axis stack it shows the heart as seen from the apex,
  anterior wall up, septum and RV on the left), found from the stack's affine. Where the affine
  carries no scanner geometry (`cmrsdk.chirality.seen_from_apex` is None: ACDC's files) the
  note under the legend says that the orientation is not known.
- Drawing: translucent fills and one-pixel contours per structure in colours that colour-blind
  readers tell apart (`STRUCTURE_COLOURS`, Okabe-Ito), a caption "z / position / region" on
  each tile fitted to it (the classifier's probability only where it is one, below 1), a
  legend and a 10 mm scale bar. Pixels are palette indices (the grey in 60 levels under each
  structure's fill, then contour and text colours), so that the blend is one table look-up and
  the PNG deflates one byte a pixel: the ED/ES montage costs about 4 % of the segmentation it
  shows (benchmarks/montage_cost.py).
"""

from __future__ import annotations

import io
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from ._version import __version__
from .chirality import seen_from_apex
from .errors import InputError
from .io._atomic import atomic_path
from .labels import APEX, BASE, LVBP, LVM, MIDDLE, NON_CARDIAC, REGION_NAMES, RVBP
from .layout import Orientation, display_orientation
from .regions import index_toward_apex, labelled_slices_base_to_apex

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from .pipeline import Segmentation, StudySegmentation

__all__ = [
    "Orientation",
    "STRUCTURE_COLOURS",
    "LABEL_RGB",
    "LABEL_TITLES",
    "display_orientation",
    "heart_window",
    "phase_tiles",
    "cardiac_slices",
    "slice_caption",
    "fit_caption",
    "MontageRow",
    "montage_rows",
    "montage_note",
    "base_first",
    "compose_montage",
    "study_montage",
    "study_montage_png",
    "montage_drawing_ms",
    "encode_png",
    "save_png",
    "save_png_bytes",
]

#: colour of each structure (RGB, 0-255), keyed by canonical label: Okabe-Ito vermillion (LVBP),
#: sky blue (LVM) and yellow (RVBP). Under simulated deuteranopia and protanopia (Machado 2009) the
#: neighbours LVBP/LVM and LVM/RVBP stay more than 90 CIELAB units apart, and the three differ in
#: lightness (L* 54, 70, 89); red and green (the ACDC figures' habit) both turned olive. One
#: table for every picture of the masks (the montage, its legend, the page).
STRUCTURE_COLOURS: dict[int, tuple[int, int, int]] = {LVBP: (213, 94, 0), LVM: (86, 180, 233), RVBP: (240, 228, 66)}
#: the former name of `STRUCTURE_COLOURS` (the same dict).
LABEL_RGB: dict[int, tuple[int, int, int]] = STRUCTURE_COLOURS
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
    "caption": (235, 235, 235),
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
    """The one-pixel contours of (N, T, T) label maps: labelled pixels with a 4-neighbour of the
    background or of a structure of a higher code.

    Every boundary is drawn once, on one side: between a structure and the background on the
    structure's side, between two structures on the lower code's (LVBP's side of the
    endocardium, LVM's of the septum), so that the contours leave a small apical cavity its fill.
    """
    edge = np.zeros(labels.shape, bool)

    def beside(here: np.ndarray, there: np.ndarray) -> np.ndarray:
        return (here > 0) & (here != there) & ((there == 0) | (there > here))

    edge[:, 1:] |= beside(labels[:, 1:], labels[:, :-1])
    edge[:, :-1] |= beside(labels[:, :-1], labels[:, 1:])
    edge[:, :, 1:] |= beside(labels[:, :, 1:], labels[:, :, :-1])
    edge[:, :, :-1] |= beside(labels[:, :, :-1], labels[:, :, 1:])
    return edge


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
    for code, rgb in STRUCTURE_COLOURS.items():
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
    rows : (heading, tiles, captions) per phase; tiles are uint8 (T, T, 3), one caption each
        (cut to fit its tile where it is wider).
    columns : tiles per line.
    mm_per_pixel : scale of the tiles, for a 10 mm bar in the legend; None draws no bar.
    note : text under the legend (orientation, captions), wrapped to the picture's width; "\\n"
        starts a new line.

    Returns
    -------
    uint8 (H, W, 3) image, at least as wide as the legend and every heading (`MIN_WIDTH`).
    """
    return np.asarray(_compose(rows, columns=columns, mm_per_pixel=mm_per_pixel, note=note, indexed=False))


#: the narrowest montage in pixels (a one-slice input): the legend and scale bar fit in it.
MIN_WIDTH = 420
_GAP, _HEAD, _LINE = 4, 22, 14
_CAPTION_X = 3  # caption text from the tile's left edge; its dark box reaches 2 px beyond the text


def _caption_room(tile: int) -> int:
    """The widest caption text (pixels) whose dark box stays inside a ``tile``-pixel tile."""
    return tile - 2 * _CAPTION_X


def _text_width(text: str, font) -> int:
    return int(np.ceil(font.getlength(text))) if text else 0


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken at spaces ("\\n" breaks too)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and _text_width(trial, font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return [line for line in lines if line]


def _legend_width(font, mm_per_pixel: float | None) -> int:
    """Pixels the legend (swatches, titles and the 10 mm bar) takes, from the picture's left edge."""
    x = _GAP
    for title in LABEL_TITLES.values():
        x += 16 + _text_width(title, font) + 14
    if mm_per_pixel:
        x += int(round(10.0 / mm_per_pixel)) + 5 + _text_width("10 mm", font)
    return x + _GAP


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
        return _EDGE_INDEX + code - 1 if indexed else STRUCTURE_COLOURS[code]

    heading_font, small, caption_font = _font(14), _font(11), _font(None)
    tile = next((t[0].shape[0] for _, t, _ in rows if len(t)), 64)
    gap, head = _GAP, _HEAD
    columns = max(1, min(columns, max((len(t) for _, t, _ in rows), default=1)))
    lines = [max(1, -(-len(t) // columns)) for _, t, _ in rows]
    # wide enough for the legend and every heading, whatever the number of slices
    width = max(
        columns * (tile + gap) + gap,
        MIN_WIDTH,
        _legend_width(small, mm_per_pixel),
        max((_text_width(h, heading_font) + 2 * gap for h, _, _ in rows), default=0),
    )
    note_lines = _wrap(note, small, width - 2 * gap)
    foot = 26 + _LINE * len(note_lines) + (4 if note_lines else 0)
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
            placements.append(("caption", fit_caption([caption], tile, cut=True), tx + _CAPTION_X, ty + 2))
        y += n * (tile + gap)
    image = Image.fromarray(canvas, "P" if indexed else "RGB")
    if indexed:
        image.putpalette(_PALETTE.tobytes())
    draw = ImageDraw.Draw(image)
    for kind, text, x, ty in placements:
        if kind == "head":
            draw.text((x, ty), text, fill=ink("white"), font=heading_font)
        elif text:
            # a dark box behind the caption keeps it legible over bright fat and blood
            box = draw.textbbox((x, ty), text, font=caption_font)
            draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=ink("black"))
            draw.text((x, ty), text, fill=ink("caption"), font=caption_font)
    x, ly = gap, y + 6
    for code, title in LABEL_TITLES.items():
        draw.rectangle((x, ly + 2, x + 11, ly + 13), fill=structure(code), outline=ink("white"))
        draw.text((x + 16, ly), title, fill=ink("legend"), font=small)
        x += 16 + _text_width(title, small) + 14
    if mm_per_pixel:
        bar = int(round(10.0 / mm_per_pixel))
        draw.rectangle((x, ly + 6, x + bar, ly + 8), fill=ink("white"))
        draw.text((x + bar + 5, ly), "10 mm", fill=ink("legend"), font=small)
    for k, line in enumerate(note_lines):
        draw.text((gap, ly + 18 + k * _LINE), line, fill=ink("note"), font=small)
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


#: a confidence printed as this or more reads "1.00": a rule's one-hot value, not a probability.
_SURE = 0.995
_CAPTION_LEVELS = 6  # forms of a caption, longest first (`_caption_levels`)
#: shorter region names for narrow tiles.
_SHORT_REGION = {NON_CARDIAC: "non-card", BASE: "base", MIDDLE: "mid", APEX: "apex"}


def slice_caption(
    z: int, region: int | None, confidence: float | None, position_mm: float | None = None, *, sep: str = " / "
) -> str:
    """'z 3 / 30 mm / middle / 0.97': the stored index, the slice position, the region the slice
    was routed by and the classifier's probability of it, where it is one below 1 (a rule's
    regions are one-hot: their "1.00" is no confidence, and is left out)."""
    parts = [f"z {z}"]
    if position_mm is not None and np.isfinite(position_mm):
        parts.append(f"{position_mm:.0f} mm")
    if region is not None:
        parts.append(REGION_NAMES.get(int(region), "?"))
        if confidence is not None and confidence < _SURE:
            parts.append(f"{confidence:.2f}")
    return sep.join(parts)


def _caption_levels(z: int, region: int | None, confidence: float | None, position_mm: float | None) -> list[str]:
    """The captions of one tile, longest first, as many for every tile (`montage_rows` takes, for
    all tiles alike, the first level at which every caption fits its tile)."""
    where = f"{position_mm:.0f}mm" if position_mm is not None and np.isfinite(position_mm) else ""
    name = "" if region is None else REGION_NAMES.get(int(region), "?")
    short = "" if region is None else _SHORT_REGION.get(int(region), "?")
    sure = confidence is None or region is None or confidence >= _SURE
    probability = [] if sure else [f"{confidence:.2f}"]

    def joined(*parts: str) -> str:
        return " ".join(p for p in parts if p)

    return [
        slice_caption(z, region, confidence, position_mm, sep=" \xb7 "),  # z 3 · 30 mm · middle
        joined(f"z{z}", where, name, *probability),
        joined(f"z{z}", where, short, *probability),
        joined(f"z{z}", where, short),
        joined(f"z{z}", where),
        f"z{z}",
    ]


def fit_caption(candidates: Sequence[str], tile: int, *, cut: bool = False) -> str:
    """The first of ``candidates`` (longest first) whose text fits a ``tile``-pixel tile with its
    dark box; the last, cut to fit where ``cut`` (else as it is), when none does."""
    font = _font(None)
    room = _caption_room(tile)
    for text in candidates:
        if _text_width(text, font) <= room:
            return text
    text = candidates[-1] if candidates else ""
    while cut and text and _text_width(text, font) > room:
        text = text[:-1]
    return text


def _cardiac_mask(labels: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
    """bool (Z,): slices labelled or routed as cardiac."""
    shown: np.ndarray = labels.reshape(labels.shape[0], -1).any(1)
    if regions is not None:
        shown |= np.asarray(regions) != NON_CARDIAC
    return shown


def _spread(shown: np.ndarray, max_slices: int) -> np.ndarray:
    """Indices of the slices to draw from a cardiac mask (Z,): the cardiac range and one more at each
    end (every slice when none is cardiac), at most ``max_slices`` evenly spread, both ends kept."""
    z = shown.shape[0]
    index = np.flatnonzero(shown)
    if len(index) == 0:
        index = np.arange(z)
    else:
        index = np.arange(max(index[0] - 1, 0), min(index[-1] + 2, z))
    if len(index) > max_slices:
        index = index[np.unique(np.linspace(0, len(index) - 1, max(max_slices, 1)).round().astype(int))]
    return index


def cardiac_slices(labels: np.ndarray, regions: np.ndarray | None, max_slices: int) -> list[int]:
    """The slices worth showing: those labelled or routed as cardiac, one more at each end, at most ``max_slices``."""
    return [int(k) for k in _spread(_cardiac_mask(labels, regions), max_slices)]


def base_first(seg: Segmentation) -> bool | None:
    """Whether slice 0 of ``seg`` is basal (True) or apical (False); None where nothing tells.

    The scanner geometry first (`cmrsdk.regions.index_toward_apex`), then the regions the slices
    were routed by (the base's slices before the apex's), then the masks' areas by the rule of
    `cmrsdk.regions` (which keeps the file order, index 0 basal, when the areas are ambiguous).
    """
    toward = index_toward_apex(seg.stack.affine)
    if toward is not None:
        return toward > 0
    if seg.regions is not None:
        regions = np.asarray(seg.regions)
        base, apex = np.flatnonzero(regions == BASE), np.flatnonzero(regions == APEX)
        if len(base) and len(apex) and base.mean() != apex.mean():
            return bool(base.mean() < apex.mean())
    order = labelled_slices_base_to_apex(seg.labels)
    if len(order) >= 2:
        return bool(order[0] < order[-1])
    return None


class MontageRow(NamedTuple):
    """One row of the montage: its heading, the phase it shows, its slices and their captions."""

    heading: str
    phase: int  # index into ``result.phases``
    slices: list[int]  # stored slice indices, in the order drawn (base -> apex where known)
    captions: list[str]  # one a slice, fitted to the tile


def _frame_name(seg: Segmentation, index: int) -> str:
    """The page's name of a cine's frame (`cmrsdk.report`): "frame N", or the reader's own name."""
    own = seg.stack.phase
    return f"frame {index}" if own in (None, "", "ED", "ES") else str(own)


def _phases_shown(result: StudySegmentation) -> list[tuple[str, int]]:
    """(name, index into ``result.phases``) of each row: "ED" and "ES" for a study of two phases,
    "ED (frame N)" and "ES (frame N)" for a cine, one "Single phase" row for one phase."""
    if len(result.phases) == 1:
        return [("Single phase", 0)]
    ed, es = result.ed_index, result.es_index
    cine = len(result.phases) > 2
    if ed == es:
        name = "ED = ES"
        return [(f"{name} ({_frame_name(result.phases[ed], ed)})" if cine else name, ed)]
    if not cine:
        return [("ED", ed), ("ES", es)]
    return [(f"ED ({_frame_name(result.ed, ed)})", ed), (f"ES ({_frame_name(result.es, es)})", es)]


def montage_rows(result: StudySegmentation, *, max_slices: int = 12, tile: int = 144) -> list[MontageRow]:
    """What the montage of ``result`` draws, row by row: headings, slices in drawing order, captions.

    Phases on one grid show the same slices (chosen from every phase's cardiac slices), ordered
    base -> apex (`base_first`; the stored order where nothing tells); the heading says so, and
    how many of the stack's slices are shown.
    """
    shown = _phases_shown(result)
    segs = [result.phases[index] for _, index in shown]
    same_grid = all(s.labels.shape == segs[0].labels.shape for s in segs)
    shared_order = None
    if same_grid:
        mask = np.zeros(segs[0].labels.shape[0], bool)
        for seg in segs:
            mask |= _cardiac_mask(seg.labels, seg.regions)
        first = next((b for b in map(base_first, segs) if b is not None), None)
        shared_order = (_spread(mask, max_slices), first)
    drafts: list[tuple[str, int, list[int], list[list[str]]]] = []
    for (name, index), seg in zip(shown, segs):
        picked, first = shared_order or (_spread(_cardiac_mask(seg.labels, seg.regions), max_slices), base_first(seg))
        slices = [int(k) for k in (picked[::-1] if first is False else picked)]
        total = seg.labels.shape[0]
        count = f"all {total} slices" if len(slices) == total else f"{len(slices)} of {total} slices shown"
        if total == 1:
            heading = f"{name}: the one slice"
        elif first is None:
            heading = f"{name}: {count}, in stored order (base and apex not known)"
        else:
            heading = f"{name}: {count}, base -> apex"
        positions = np.asarray(seg.stack.slice_positions, dtype=np.float64)
        confidence = seg.region_confidence
        levels = [
            _caption_levels(
                k,
                None if seg.regions is None else int(seg.regions[k]),
                None if confidence is None else float(confidence[k]),
                float(positions[k]),
            )
            for k in slices
        ]
        drafts.append((heading, index, slices, levels))
    # one caption form for every tile: the longest at which all fit their tiles
    font, room = _font(None), _caption_room(tile)
    level = next(
        (
            n
            for n in range(_CAPTION_LEVELS)
            if all(_text_width(levels[n], font) <= room for *_, row in drafts for levels in row)
        ),
        _CAPTION_LEVELS - 1,
    )
    rows = []
    for heading, index, slices, row in drafts:
        captions = [fit_caption([levels[level]], tile, cut=True) for levels in row]
        rows.append(MontageRow(heading, index, slices, captions))
    return rows


def montage_note(result: StudySegmentation) -> str:
    """The text under the legend: what the orientation is (or that the file does not tell), and
    what the captions say."""
    affine = result.phases[_phases_shown(result)[0][1]].stack.affine
    if seen_from_apex(affine) is None:
        view = (
            "Orientation not known from the file (no scanner geometry in its affine): "
            "the patient's left may be on either side of the image."
        )
    else:
        view = "Radiological view from the scanner geometry: the patient's left on the image's right."
    probabilities = any(
        confidence is not None and bool((confidence < _SURE).any())
        for confidence in (result.phases[index].region_confidence for _, index in _phases_shown(result))
    )
    captions = "Captions: z (slice index as stored), slice position in mm, region of the slice"
    # the picture travels without its page: it says itself that no one has checked it
    automatic = f"Automatic segmentation by cmrsdk {__version__}, not verified: check the contours before use."
    return f"{view}\n{captions}{', classifier probability where below 1' if probabilities else ''}.\n{automatic}"


def study_montage(result: StudySegmentation, *, max_slices: int = 12, tile: int = 144, columns: int = 6) -> np.ndarray:
    """The ED and ES slices of a segmented study in one montage, ED above ES (one row for one phase).

    Parameters
    ----------
    result : the segmented study (`cmrsdk.pipeline.StudySegmentation`).
    max_slices : at most this many slices per phase, evenly spread over the heart (the heading
        says how many of the stack's slices are shown).
    tile : side of each slice's tile in screen pixels; the image is at most
        ``max(columns * (tile + 4) + 4, MIN_WIDTH)`` wide and ``2 * ceil(max_slices / columns)``
        tiles high.
    columns : tiles per line.

    Returns
    -------
    uint8 (H, W, 3) RGB image (greys in 60 levels, as in ``overlay.png``).
    """
    return np.asarray(_study_montage_image(result, max_slices=max_slices, tile=tile, columns=columns).convert("RGB"))


def _study_montage_image(result: StudySegmentation, *, max_slices: int, tile: int, columns: int) -> PILImage:
    """`study_montage` as a Pillow "P" image (palette `_PALETTE`), the form that is encoded."""
    layout = montage_rows(result, max_slices=max_slices, tile=tile)
    segs = [result.phases[row.phase] for row in layout]
    same_grid = all(s.labels.shape == segs[0].labels.shape for s in segs)
    shared = heart_window([s.labels for s in segs], segs[0].stack.spacing[1:]) if same_grid else None
    rows = []
    scale = None
    for row, seg in zip(layout, segs):
        stack = seg.stack
        spacing = stack.spacing[1:]
        window = shared or heart_window([seg.labels], spacing)
        tiles = _tile_indices(
            stack.pixels, seg.labels, spacing, row.slices, window, display_orientation(stack.affine), tile=tile
        )
        rows.append((row.heading, tiles, row.captions))
        scale = scale or window[2] / tile
    return _compose(
        rows,
        columns=columns,
        mm_per_pixel=scale if shared else None,
        note=montage_note(result),
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
