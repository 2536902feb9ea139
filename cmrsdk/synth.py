"""Deterministic synthetic short-axis cine studies with labels (numpy only).

A study is drawn from one seed: the same seed gives the same arrays on every machine. The
anatomy is analytic, in mm, in a heart frame whose long axis is the slice normal (the
short-axis plane is prescribed perpendicular to the LV long axis):

- LV: a half-ellipsoid cavity (LVBP) inside a half-ellipsoid wall (LVM) that narrow from the
  mitral plane (depth 0) to the apex; the wall extends one wall thickness beyond the cavity tip,
  so the last apical slice cuts a cap of myocardium only (with partial volume through the slice).
- Base: over the first ``_OPEN_MM`` below the mitral plane the myocardial ring opens at the
  outflow tract (a wedge of the ring is blood pool, labelled LVBP).
- Above the base the atria appear (bright blood, label 0: those slices are non-cardiac).
- RV: an ellipse beside the LV, outside the LV wall (a crescent wrapping the septum), ending at
  about three quarters of the LV length (RVBP).
- Motion: a contraction ``c`` in [0, 1] (0 at ED, 1 at ES) narrows the cavities, thickens the
  wall (myocardial volume kept) and shortens the LV from the base, so the mitral plane moves
  towards the apex by about 12 % of the LV length (through-plane motion).
- Surroundings, so that models trained on real ACDC scans recognise the slices: the body
  cross-section (an ellipse about 270 - 310 mm wide, cut by the field of view like an oblique
  short-axis plane) with a bright subcutaneous fat ring and darker muscle; dark lungs above and
  beside the heart; bright epicardial fat (thickest at the grooves) and a thin RV free wall; the
  diaphragm, rising towards the apex, with the liver (image left) and the stomach (image right)
  below it; a bright descending aorta and the spine behind the heart; the ascending aorta and
  pulmonary trunk beside the atria above the base; dark papillary muscles in the LV cavity
  (labelled LVBP, as in ACDC). The layout follows ACDC's arrays: RV on the image left of the LV
  and slightly below, lungs towards row 0.
- Imaging (cine bSSFP): blood 2.6 - 3.6 x myocardium, fat as bright as blood, lungs and air
  near zero; in-plane spacing 1.35 - 1.8 mm, slice spacing 8 - 10 mm, matrix 208 - 256 x
  170 - 240 (as ACDC); each slice averages three sub-planes through the heart (partial volume),
  edges are soft within a pixel; a smooth coil-sensitivity bias field; Rician noise (magnitude
  of complex Gaussian noise).

Pixels are float32 (Z, Y, X) in arbitrary scanner units (0 .. about 5000); labels are
canonical uint8 (0 bg, 1 LVBP, 2 LVM, 3 RVBP); slice 0 is basal unless ``apex_first``.
The affine places the heart as in a patient: base-to-apex along RAS+ (-x, +y, -z), i.e. towards
the patient's left, anterior and inferior.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .types import Stack, Study, StudyInfo

__all__ = ["synthetic_study", "contraction_curve"]

_OPEN_MM = 10.0      # depth below the mitral plane over which the basal ring is open
_SHORTENING = 0.12   # fraction of the LV length lost from the base at full contraction
_SUBPLANES = (-1.0 / 3.0, 0.0, 1.0 / 3.0)  # sub-plane offsets, in slice spacings


def contraction_curve(n_phases: int, es_fraction: float = 0.35) -> tuple[np.ndarray, int]:
    """Contraction per phase (float64 (T,), 0 at ED = phase 0, 1 at ES) and the ES index."""
    if n_phases < 2:
        raise InputError(f"'n_phases' must be at least 2 (ED and ES), got {n_phases}")
    if n_phases == 2:
        return np.array([0.0, 1.0]), 1
    es = max(1, min(n_phases - 1, int(round(es_fraction * n_phases))))
    k = np.arange(n_phases, dtype=np.float64)
    systole = 0.5 * (1.0 - np.cos(np.pi * k / es))
    diastole = 0.5 * (1.0 + np.cos(np.pi * (k - es) / (n_phases - es)))
    return np.where(k <= es, systole, diastole), es


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _Heart:
    """The analytic anatomy of one subject at ED (all lengths in mm)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.cavity_radius = rng.uniform(20.0, 28.0)
        self.wall = rng.uniform(7.0, 11.0)
        self.length = rng.uniform(62.0, 84.0)          # mitral plane to cavity tip
        self.rv_axes = (rng.uniform(30.0, 38.0), rng.uniform(14.0, 20.0))
        self.rv_angle = rng.uniform(-0.35, 0.35)       # RV direction around the LV, radians
        self.open_angle = self.rv_angle + rng.uniform(0.5, 0.9)  # outflow tract, towards the RV
        self.atrium_depth = rng.uniform(14.0, 22.0)
        self.drift = rng.uniform(-0.06, 0.06, size=2)   # LV centre shift per mm of depth (y, x)

    def shape_at(self, c: float) -> dict[str, float]:
        length = self.length * (1.0 - _SHORTENING * c)
        cavity = self.cavity_radius * (1.0 - 0.3 * c)
        # keep the myocardial cross-section area (and so, roughly, volume) through contraction
        outer = np.sqrt(cavity**2 + ((self.cavity_radius + self.wall) ** 2 - self.cavity_radius**2) * self.length / length)
        return {"length": length, "cavity": cavity, "outer": float(outer), "cap": self.wall * (1.0 + 0.3 * c),
                "base_shift": self.length - length, "rv_scale": 1.0 - 0.25 * c}


def _render_plane(heart: _Heart, shape: dict[str, float], depth: float, p: np.ndarray, q: np.ndarray,
                  contrast: dict[str, float], edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Intensity (float64 (Y, X)) and labels (uint8 (Y, X)) of one plane at ``depth`` mm below the mitral plane.

    ``p``, ``q`` : float64 (Y, X) in-plane coordinates in mm of the pixel centres (rows, columns).
    """
    p = p - heart.drift[0] * depth
    q = q - heart.drift[1] * depth
    d = np.hypot(p, q)
    angle = np.arctan2(p, q)
    image = np.full(p.shape, contrast["tissue"])
    labels = np.zeros(p.shape, dtype=np.uint8)
    length, cap = shape["length"], shape["cap"]

    if depth < 0.0:
        # atria above the mitral plane: blood, no label
        if depth > -heart.atrium_depth:
            t = 1.0 - ((depth + heart.atrium_depth / 2) / (heart.atrium_depth / 2)) ** 2
            radius = 0.9 * heart.cavity_radius * np.sqrt(max(t, 0.0))
            la = _sigmoid((radius - d) / edge)
            ra_centre = heart.cavity_radius + heart.rv_axes[1]
            ra = _sigmoid((0.8 * radius - np.hypot(p - ra_centre * np.sin(heart.rv_angle), q - ra_centre * np.cos(heart.rv_angle))) / edge)
            image += (contrast["blood"] - contrast["tissue"]) * np.clip(la + ra, 0.0, 1.0)
        return image, labels

    # LV wall and cavity: half-ellipsoids; the wall reaches one cap thickness beyond the cavity tip
    cavity_r = shape["cavity"] * np.sqrt(max(0.0, 1.0 - (depth / length) ** 2))
    outer_r = shape["outer"] * np.sqrt(max(0.0, 1.0 - (depth / (length + cap)) ** 2))

    # RV: an ellipse beside the LV, outside the LV wall, ending at 3/4 of the LV length
    rv_length = 0.75 * length
    if depth < rv_length:
        scale = shape["rv_scale"] * np.sqrt(1.0 - (depth / rv_length) ** 2)
        a, b = heart.rv_axes[0] * scale, heart.rv_axes[1] * scale
        centre = outer_r + 0.35 * b
        cy, cx = centre * np.sin(heart.rv_angle), centre * np.cos(heart.rv_angle)
        # ellipse axes: b along the LV-RV direction, a across it (a crescent around the septum)
        u = (q - cx) * np.cos(heart.rv_angle) + (p - cy) * np.sin(heart.rv_angle)
        v = -(q - cx) * np.sin(heart.rv_angle) + (p - cy) * np.cos(heart.rv_angle)
        rho = np.hypot(u / max(b, 1e-6), v / max(a, 1e-6))
        rv_soft = _sigmoid((1.0 - rho) * min(a, b) / edge) * _sigmoid((d - outer_r) / edge)
        image += (contrast["blood"] - contrast["tissue"]) * rv_soft
        labels[(rho < 1.0) & (d >= outer_r)] = 3

    wall_soft = _sigmoid((outer_r - d) / edge) if outer_r > 0 else np.zeros_like(d)
    cavity_soft = _sigmoid((cavity_r - d) / edge) if cavity_r > 0 else np.zeros_like(d)
    wall_mask, cavity_mask = d < outer_r, d < cavity_r
    if depth < _OPEN_MM:
        # the basal ring opens at the outflow tract: the wedge of wall there is blood pool
        wedge = np.abs(np.angle(np.exp(1j * (angle - heart.open_angle)))) < 0.45 * (1.0 - depth / _OPEN_MM) + 0.1
        cavity_soft = np.where(wedge, wall_soft, cavity_soft)
        cavity_mask = cavity_mask | (wedge & wall_mask)
    image = image * (1.0 - wall_soft) + wall_soft * (contrast["myocardium"] * (1.0 - cavity_soft) + contrast["blood"] * cavity_soft)
    labels[wall_mask] = 2
    labels[cavity_mask] = 1
    return image, labels


def synthetic_study(seed: int = 0, *, n_slices: int | None = None, shape: tuple[int, int] | None = None,
                    spacing: tuple[float, float, float] | None = None, n_phases: int = 2,
                    apex_first: bool = False, noise: float | None = None) -> Study:
    """Draw one deterministic synthetic short-axis study with canonical labels.

    Parameters
    ----------
    seed : the seed of the one ``numpy.random.Generator`` behind every random choice.
    n_slices : slice count Z; None chooses one that covers the atria, the heart and one slice
        below the apex.
    shape : in-plane matrix (Y, X); None draws each in 112 .. 176.
    spacing : (dz, dy, dx) in mm; None draws dz in 6 .. 10 and dy = dx in 1.25 .. 1.9.
    n_phases : 2 gives (ED, ES); more gives a full cine cycle (ED at phase 0, ES at 35 %).
    apex_first : store the slices apex first (reversed), as some exports do.
    noise : Rician noise level as a fraction of the blood signal; None draws 0.02 .. 0.06.

    Returns
    -------
    Study with float32 (Z, Y, X) pixels and uint8 canonical labels on every phase, an RAS+
    affine, trigger times (ms) for a 1000 ms cycle, ``ed_index`` and ``es_index``.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"'seed' must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    heart = _Heart(rng)
    if spacing is None:
        pixel = rng.uniform(1.25, 1.9)
        dz, dy, dx = rng.uniform(6.0, 10.0), pixel, pixel
    else:
        dz, dy, dx = (float(s) for s in spacing)
        if not all(np.isfinite(s) and s > 0 for s in (dz, dy, dx)):
            raise InputError(f"'spacing' must be three positive mm values (dz, dy, dx), got {spacing!r}")
    ny, nx = (int(rng.integers(112, 177)), int(rng.integers(112, 177))) if shape is None else (int(shape[0]), int(shape[1]))
    if ny < 32 or nx < 32:
        raise InputError(f"'shape' must be at least (32, 32) pixels, got {(ny, nx)}")
    contractions, es_index = contraction_curve(n_phases)
    noise_level = rng.uniform(0.02, 0.06) if noise is None else float(noise)
    if not 0.0 <= noise_level < 1.0:
        raise InputError(f"'noise' must be a fraction in [0, 1), got {noise!r}")
    gain = rng.uniform(1.0, 8.0) * 100.0
    contrast = {"blood": gain * rng.uniform(2.2, 3.0), "myocardium": gain * rng.uniform(0.5, 0.8),
                "tissue": gain * rng.uniform(0.9, 1.3)}

    # slice 0 sits one to two slices above the mitral plane (atria); the stack ends below the apex
    first_depth = -rng.uniform(1.0, 2.0) * dz
    extent = heart.length + heart.wall * 1.3 - first_depth
    z_count = int(np.ceil(extent / dz)) + 1 if n_slices is None else int(n_slices)
    if z_count < 1:
        raise InputError(f"'n_slices' must be at least 1, got {n_slices}")
    if n_slices is not None:
        first_depth = (heart.length + heart.wall) / 2 - (z_count - 1) * dz / 2

    # the LV axis sits near the image centre, with a random offset of up to 10 % of the field
    offset = rng.uniform(-0.1, 0.1, size=2) * np.array([ny * dy, nx * dx])
    rows = (np.arange(ny) - (ny - 1) / 2) * dy - offset[0]
    cols = (np.arange(nx) - (nx - 1) / 2) * dx - offset[1]
    p, q = np.meshgrid(rows, cols, indexing="ij")
    edge = 0.5 * min(dy, dx)
    # a smooth coil-sensitivity bias field, the same for every phase
    bias = 1.0 + 0.15 * np.cos(rng.uniform(0.5, 1.5) * p / 60.0 + rng.uniform(0, np.pi)) * np.cos(q / 70.0)

    affine = _affine(seed=int(seed), spacing=(dz, dy, dx), shape=(z_count, ny, nx), apex_first=apex_first)
    # each slice centre along the DICOM normal (row x column direction), as the readers compute it
    normal = np.cross(affine[:3, 2], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    positions = (affine[:3, 3] + np.outer(np.arange(z_count), affine[:3, 0])) @ normal

    stacks = []
    for index, c in enumerate(contractions):
        state = heart.shape_at(float(c))
        images = np.empty((z_count, ny, nx), dtype=np.float32)
        labels = np.empty((z_count, ny, nx), dtype=np.uint8)
        for z in range(z_count):
            # depth below the (moving) mitral plane of this slice's centre
            centre_depth = first_depth + z * dz - state["base_shift"]
            planes = [_render_plane(heart, state, centre_depth + o * dz, p, q, contrast, edge) for o in _SUBPLANES]
            signal = np.mean([plane[0] for plane in planes], axis=0) * bias
            sigma = noise_level * contrast["blood"]
            noisy = np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))
            images[z] = noisy
            labels[z] = planes[1][1]
        if apex_first:
            images, labels = images[::-1].copy(), labels[::-1].copy()
        phase = "ED" if index == 0 else "ES" if index == es_index else f"frame {index}"
        stacks.append(Stack(pixels=images, spacing=(dz, dy, dx), affine=affine, labels=labels,
                            slice_positions=positions, phase=phase, source=f"synthetic seed {seed}"))
    if n_phases == 2:
        times = np.array([0.0, 1000.0 * 0.35])
    else:
        times = np.arange(n_phases, dtype=np.float64) * 1000.0 / n_phases
    info = StudyInfo(patient_id=f"SYNTH{seed:06d}", manufacturer="cmrsdk synthetic", field_strength_t=1.5,
                     series_description="SAX cine (synthetic)", group="synthetic", source=f"synthetic seed {seed}")
    return Study(phases=tuple(stacks), ed_index=0, es_index=es_index, trigger_times_ms=times, info=info)


def _affine(*, seed: int, spacing: tuple[float, float, float], shape: tuple[int, int, int],
            apex_first: bool) -> np.ndarray:
    """float64 (4, 4) (z, y, x) -> RAS+ mm: base-to-apex along (-1, 1, -1)/sqrt(3) with a seeded tilt."""
    dz, dy, dx = spacing
    z_count, ny, nx = shape
    rng = np.random.default_rng([seed, 1])  # its own stream: the anatomy does not depend on it
    long_axis = np.array([-1.0, 1.0, -1.0]) + rng.uniform(-0.25, 0.25, size=3)
    long_axis /= np.linalg.norm(long_axis)
    helper = np.array([0.0, 0.0, 1.0])
    col_dir = np.cross(long_axis, helper)
    col_dir /= np.linalg.norm(col_dir)
    row_dir = np.cross(col_dir, long_axis)
    affine = np.eye(4)
    slice_dir = -long_axis if apex_first else long_axis
    affine[:3, 0] = slice_dir * dz
    affine[:3, 1] = col_dir * dy
    affine[:3, 2] = row_dir * dx
    centre = np.array([(z_count - 1) / 2, (ny - 1) / 2, (nx - 1) / 2])
    affine[:3, 3] = -affine[:3, :3] @ centre  # the stack centre at the world origin
    return affine
