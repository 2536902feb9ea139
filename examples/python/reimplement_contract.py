"""docs/CONTRACT.md followed step by step without cmrsdk: nibabel, numpy, scipy and ONNX Runtime.

What an integrator writes who runs the shipped bundle's `baseline.onnx` from their own code,
kept as the contract's executable check: tests/test_contract_doc.py segments held-out studies
with it and with `cmrsdk.Pipeline(backend="onnx")` and asserts identical masks, voxel for voxel.
Step numbers are the page's. NIfTI input only (an ED and an ES file on one grid); the DICOM
readers, layouts and quality flags are not part of the contract.

    python examples/python/reimplement_contract.py ED.nii.gz ES.nii.gz

prints each phase's LV / myocardium / RV voxel counts and the ES basal RV decision.
`segment_study(Net(), ed_path, es_path)` -> (ED, ES uint8 (Z, Y, X) labels 0 bg, 1 LVBP,
2 LVM, 3 RVBP on the files' grids, with (Z, Y, X) = the NIfTI's (X, Y, Z) transposed; a dict
of what was recorded: each phase's network window, the ES slice whose RV was dropped, its ratio).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

BUNDLE = Path(__file__).resolve().parents[2] / "cmrsdk" / "demo" / "bundle"
MAN = json.loads((BUNDLE / "manifest.json").read_text())
PRE = MAN["preprocessing"]
TARGET = tuple(PRE["target_spacing"])
SIZE = tuple(PRE["size"])
CROP = tuple(PRE["heart_crop"])
APEX_RAS = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)


class Net:
    def __init__(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        self.s = ort.InferenceSession(str(BUNDLE / "baseline.onnx"), so, providers=["CPUExecutionProvider"])

    def run(self, x):
        return self.s.run(["probabilities"], {"image": np.ascontiguousarray(x, np.float32)})[0]

    def half_turn(self, x):
        z = len(x)
        out = self.run(np.concatenate([x, x[:, :, ::-1, ::-1]]))
        p = out[:z].copy()
        p += out[z:][:, :, ::-1, ::-1]
        p /= np.float32(2)
        return p


# ---- step 2: reading
def read(path):
    img = nib.load(str(path))
    pixels = np.asanyarray(img.dataobj).transpose(2, 1, 0).astype(np.float32)
    zooms = [float(v) for v in img.header.get_zooms()[:3]]
    slice_dir = np.asarray(img.affine, np.float64)[:3, 2]
    return pixels, (zooms[2], zooms[1], zooms[0]), slice_dir


# ---- step 3: resampling
def coords(n, n_out):
    return (np.arange(n_out) + 0.5) * (n / n_out) - 0.5


def resampled_shape(shape, spacing):
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, TARGET))


def resample(stack, shape_r, order):
    z, y, x = stack.shape
    yy, xx = np.meshgrid(coords(y, shape_r[0]), coords(x, shape_r[1]), indexing="ij")
    out = np.empty((z, *shape_r), np.float32)
    for k in range(z):
        if order == 0:
            iy = np.clip(np.floor(coords(y, shape_r[0]) + 0.5).astype(int), 0, y - 1)
            ix = np.clip(np.floor(coords(x, shape_r[1]) + 0.5).astype(int), 0, x - 1)
            out[k] = stack[k][np.ix_(iy, ix)]
        else:
            out[k] = ndimage.map_coordinates(stack[k].astype(np.float64), [yy, xx], order=3, mode="mirror")
    return out


# ---- step 4: normalisation
def statistics_mask(native, shape_r):
    keep = None
    zeros = native.size - np.count_nonzero(native)
    if zeros >= 0.25 * native.size and zeros != native.size:
        two_valued = any(
            np.count_nonzero(native == v) + zeros == native.size for v in (native.min(), native.max()) if v != 0
        )
        if not two_valued:
            keep = native != 0
    values = native[keep] if keep is not None else native.reshape(-1)
    if values.size >= 100:
        sample = values[:: max(1, values.size // 65536)].astype(np.float64)
        p95, p995 = np.percentile(sample, (95.0, 99.5))
        if p95 > 0 and p995 > 4.0 * p95:
            bright = native > 4.0 * float(np.percentile(values, 95.0))
            keep = ~bright if keep is None else keep & ~bright
    if keep is None:
        return None
    mask = resample(keep.astype(np.float32), shape_r, 0) > 0
    return mask if mask.any() else None


def normalise(r, mask):
    v = r[mask] if mask is not None else r.reshape(-1)
    lo, hi = (np.float32(q) for q in np.percentile(v, (0.5, 99.5)))
    c = np.clip(v, lo, hi).astype(np.float64)
    mean, std = c.mean(), c.std()
    return ((np.clip(r, lo, hi).astype(np.float64) - mean) * (1.0 / max(std, 1e-8))).astype(np.float32)


# ---- step 5: window
def window_offset(c, size):
    return tuple(math.floor(ci - (s - 1) / 2) for ci, s in zip(c, size))


def full_window(n, window_centre, native_shape):
    _, ry, rx = n.shape
    if window_centre is None:
        c = ((ry - 1) / 2, (rx - 1) / 2)
    else:
        c = tuple((wc + 0.5) * r / nn - 0.5 for wc, r, nn in zip(window_centre, (ry, rx), native_shape))
    oy, ox = window_offset(c, SIZE)
    win = np.full((n.shape[0], *SIZE), float(n.min()), np.float32)
    ys, ye, xs, xe = max(oy, 0), min(oy + SIZE[0], ry), max(ox, 0), min(ox + SIZE[1], rx)
    win[:, ys - oy : ye - oy, xs - ox : xe - ox] = n[:, ys:ye, xs:xe]
    return win[:, None], (oy, ox)


# ---- step 6: locate
def locate(net, win):
    z = len(win)
    lo, hi, groups, seen = (z - 1) // 2, z // 2, [], set()
    while lo >= 0:
        g = [k for k in sorted({lo, hi}) if k not in seen]
        if g:
            groups.append(g)
            seen.update(g)
        lo, hi = lo - 1, hi + 1
    for g in groups[:3]:
        fg = net.run(win[g]).argmax(1) > 0
        cs = [np.argwhere(f).mean(0) for f in fg if f.sum() >= 50]
        if cs:
            return float(np.mean([c[0] for c in cs])), float(np.mean([c[1] for c in cs]))
    return None


# ---- step 8 helpers
def heart_like(w):
    slices = int(np.count_nonzero((w == 1).sum(axis=(1, 2)) >= 20))
    inside = w == 1
    if not inside.any():
        return False
    ring = np.zeros_like(inside)
    ring[:, 1:, :] |= inside[:, :-1, :]
    ring[:, :-1, :] |= inside[:, 1:, :]
    ring[:, :, 1:] |= inside[:, :, :-1]
    ring[:, :, :-1] |= inside[:, :, 1:]
    ring &= ~inside
    share = np.count_nonzero(w[ring] == 2) / max(int(np.count_nonzero(ring)), 1)
    return slices >= 3 and share >= 0.8


def toward_apex(slice_dir):
    n = np.linalg.norm(slice_dir)
    cos = float(slice_dir @ APEX_RAS) / n
    return None if abs(cos) < 0.7 else (1 if cos > 0 else -1)


def slope(areas):
    n = areas.size
    mean = float(areas.mean()) if n else 0.0
    if n < 2 or mean <= 0:
        return None
    s = float(np.polyfit(np.arange(n, dtype=np.float64), areas, 1)[0])
    return None if abs(s) * (n - 1) < 0.05 * mean else s


def base_to_apex(heart, lv, direction):
    labelled = np.flatnonzero(heart > 0)
    if direction is not None:
        return labelled if direction > 0 else labelled[::-1]
    s = slope(heart[labelled].astype(np.float64))
    if s is None:
        s = slope(lv[labelled].astype(np.float64))
    return labelled[::-1] if s is not None and s > 0 else labelled


# ---- step 9
def back(p, native_shape, resampled, offset, size):
    axes = []
    for n, r, o, s in zip(native_shape, resampled, offset, size):
        rr = (np.arange(n) + 0.5) * (r / n) - 0.5 - o
        inside = (rr >= -0.5) & (rr < s - 0.5)
        rc = np.clip(rr, 0, s - 1)
        f = np.floor(rc).astype(int)
        axes.append((inside, f, np.minimum(f + 1, s - 1), (rc - f).astype(np.float32)))
    (iny, fy, gy, wy), (inx, fx, gx, wx) = axes
    top = (1 - wy)[None, None, :, None] * p[:, :, fy] + wy[None, None, :, None] * p[:, :, gy]
    v = (1 - wx) * top[..., fx] + wx * top[..., gx]
    lab = v.argmax(1).astype(np.uint8)
    lab[:, ~iny] = 0
    lab[:, :, ~inx] = 0
    return lab


# ---- step 10
def largest(lab):
    out = np.zeros_like(lab)
    st = ndimage.generate_binary_structure(3, 1)
    for c in (1, 2, 3):
        cc, n = ndimage.label(lab == c, st)
        if n:
            sizes = np.bincount(cc.ravel())[1:]
            out[cc == 1 + int(np.argmax(sizes))] = c
    return out


def reattach(labels, cleaned, spacing_yx):
    lost = (labels != 0) & (cleaned == 0)
    out = cleaned.copy()
    scale = np.asarray(spacing_yx, np.float64)
    for c in np.unique(labels[lost]):
        drawn = (labels == c).any(axis=(1, 2))
        present = (out == c).any(axis=(1, 2))
        centres = {}
        grown = True
        while grown:
            grown = False
            for z in np.flatnonzero(drawn & ~present):
                nbs = [n for n in (z - 1, z + 1) if 0 <= n < len(present) and present[n]]
                if not nbs:
                    continue
                cc, n = ndimage.label(labels[z] == c, ndimage.generate_binary_structure(2, 1))
                piece = cc == 1 + int(np.argmax(np.bincount(cc.ravel())[1:]))
                here = np.argwhere(piece).mean(0) * scale
                for nb in nbs:
                    if nb not in centres:
                        centres[nb] = np.argwhere(out[nb] == c).mean(0) * scale
                if min(float(np.linalg.norm(here - centres[nb])) for nb in nbs) <= 15.0:
                    out[z][piece] = c
                    centres[int(z)], present[z], grown = here, True, True
    return out


def segment_window(net, native, spacing, slice_dir, centre, window_centre, known):
    """Steps 3 to 10 for one stack; returns labels, centre used, window transform, cuts."""
    shape_r = resampled_shape(native.shape[1:], spacing[1:])
    n = normalise(resample(native, shape_r, 3), statistics_mask(native, shape_r))
    win, (oy, ox) = full_window(n, window_centre, native.shape[1:])
    if centre == "unset":
        centre = locate(net, win)
    if centre is not None:
        y0 = min(max(math.floor(centre[0] - (CROP[0] - 1) / 2), 0), SIZE[0] - CROP[0])
        x0 = min(max(math.floor(centre[1] - (CROP[1] - 1) / 2), 0), SIZE[1] - CROP[1])
        images = np.ascontiguousarray(win[:, :, y0 : y0 + CROP[0], x0 : x0 + CROP[1]])
        offset, size = (oy + y0, ox + x0), CROP
    else:
        images, offset, size = win, (oy, ox), SIZE
    p = net.half_turn(images)
    w = p.argmax(1)
    fg = w > 0
    unsure = bool(fg.any()) and float(p.max(1)[fg].mean()) < 0.92
    if unsure and not known and not heart_like(w):
        w = np.zeros_like(w)
    heart = (w > 0).sum(axis=(1, 2))
    p[heart < 20] = 0.0
    p[heart < 20, 0] = 1.0
    lab = back(p, native.shape[1:], shape_r, offset, size)
    lab = reattach(lab, largest(lab), spacing[1:])
    if not native.any():
        lab[:] = 0
    # window footprint (full window) and whether the masks cut it
    bounds = []
    for nn, r, o, s in zip(native.shape[1:], shape_r, (oy, ox), SIZE):
        rr = (np.arange(nn) + 0.5) * (r / nn) - 0.5 - o
        ins = np.flatnonzero((rr >= -0.5) & (rr < s - 0.5))
        bounds += [int(ins[0]), int(ins[-1])]
    y0_, y1_, x0_, x1_ = bounds
    f = lab > 0
    ny, nx = lab.shape[1:]
    cuts = bool(
        (y0_ > 0 and f[:, y0_].any())
        or (y1_ < ny - 1 and f[:, y1_].any())
        or (x0_ > 0 and f[:, :, x0_].any())
        or (x1_ < nx - 1 and f[:, :, x1_].any())
    )
    window = {"resampled_shape": list(shape_r), "offset_yx": [int(offset[0]), int(offset[1])], "size": list(size)}
    return lab, centre, window, cuts


def segment_stack(net, native, spacing, slice_dir, centre="unset", window_centre="unset", known=False):
    given = window_centre != "unset"
    placed = None if window_centre == "unset" else window_centre
    for move in range(3):
        lab, found, window, cuts = segment_window(net, native, spacing, slice_dir, centre, placed, known)
        if given or not cuts or move == 2:
            break
        cy, cx = (float(v) for v in np.argwhere(lab > 0)[:, 1:].mean(0))
        if placed is not None and math.hypot(cy - placed[0], cx - placed[1]) < 1.0:
            break
        placed = (cy, cx)
    return lab, found, placed, window


def segment_pair(net, ed_path, es_path, claimed_scale=1.0):
    (ed_px, ed_sp, ed_dir), (es_px, es_sp, es_dir) = read(ed_path), read(es_path)
    ed_sp = (ed_sp[0], ed_sp[1] / claimed_scale, ed_sp[2] / claimed_scale)
    es_sp = (es_sp[0], es_sp[1] / claimed_scale, es_sp[2] / claimed_scale)
    ed, centre, placed, ed_win = segment_stack(net, ed_px, ed_sp, ed_dir)
    same = ed_px.shape == es_px.shape and ed_sp == es_sp
    found = bool(ed.any())
    es, _, _, es_win = (
        segment_stack(net, es_px, es_sp, es_dir, centre, placed if found else "unset", known=found)
        if same
        else segment_stack(net, es_px, es_sp, es_dir)
    )
    # step 13 (same slice positions assumed: same file geometry)
    dropped, ratio = None, None
    order = base_to_apex((ed > 0).sum(axis=(1, 2)), ((ed == 1) | (ed == 2)).sum(axis=(1, 2)), toward_apex(ed_dir))
    rv_ed, rv_es = (ed == 3).sum(axis=(1, 2)), (es == 3).sum(axis=(1, 2))
    for z in order:
        if rv_es[z]:
            ratio = float(rv_es[z] / rv_ed[z]) if rv_ed[z] else float("inf")
            if ratio < 0.4:
                es = es.copy()
                es[z][es[z] == 3] = 0
                dropped = int(z)
            break
    return ed, es, {"ED": ed_win, "ES": es_win, "dropped": dropped, "ratio": ratio, "ed_spacing": ed_sp}


def lv_area(ed, spacing):
    return max(int(np.count_nonzero((s == 1) | (s == 2))) for s in ed) * spacing[1] * spacing[2]


def segment_study(net, ed_path, es_path):
    ed, es, info = segment_pair(net, ed_path, es_path)
    a = lv_area(ed, info["ed_spacing"])
    scale = None
    if 0 < a < 1800:
        scale = max(0.4, math.sqrt(a / 3000))
    elif a > 8500:
        scale = math.sqrt(a / 6000)
    if scale is not None:
        sp = [read(p)[1] for p in (ed_path, es_path)]
        finest, coarsest = min(min(s[1:]) for s in sp), max(max(s[1:]) for s in sp)
        scale = min(max(scale, coarsest / 20.0), finest / 0.3)
        if abs(scale - 1.0) >= 0.05:
            ed, es, info = segment_pair(net, ed_path, es_path, scale)
            info["heart_scale"] = round(scale, 3)
    return ed, es, info


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python examples/python/reimplement_contract.py ED.nii.gz ES.nii.gz")
        return 2
    ed, es, info = segment_study(Net(), *argv)
    for name, labels in (("ED", ed), ("ES", es)):
        counts = {
            label: int(np.count_nonzero(labels == code)) for code, label in ((1, "LVBP"), (2, "LVM"), (3, "RVBP"))
        }
        print(name, "voxels", counts, "window", info[name])
    print("ES basal RV dropped on slice", info["dropped"], "ratio", info["ratio"])
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
