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

from ._checks import check_spacing
from .errors import InputError
from .types import Stack, Study, StudyInfo

__all__ = ["synthetic_study", "contraction_curve"]

_OPEN_MM = 10.0  # depth below the mitral plane over which the basal ring is open
_SHORTENING = 0.12  # fraction of the LV length lost from the base at full contraction
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
        self.length = rng.uniform(62.0, 84.0)  # mitral plane to cavity tip
        self.rv_axes = (rng.uniform(30.0, 38.0), rng.uniform(14.0, 20.0))
        # RV direction around the LV (radians, atan2(row, column)): image left, slightly below, as in ACDC
        self.rv_angle = np.pi + rng.uniform(-0.6, 0.25)
        self.open_angle = self.rv_angle + rng.uniform(0.5, 0.9)  # outflow tract, towards the RV
        self.atrium_depth = rng.uniform(14.0, 22.0)
        self.drift = rng.uniform(-0.06, 0.06, size=2)  # LV centre shift per mm of depth (y, x)
        self.fat = rng.uniform(3.0, 7.0)  # epicardial fat at the grooves
        self.papillary = rng.uniform(0.12, 0.18)  # papillary muscle radius / cavity radius

    def shape_at(self, c: float) -> dict[str, float]:
        length = self.length * (1.0 - _SHORTENING * c)
        cavity = self.cavity_radius * (1.0 - 0.3 * c)
        # keep the myocardial cross-section area (and so, roughly, volume) through contraction
        outer = np.sqrt(
            cavity**2 + ((self.cavity_radius + self.wall) ** 2 - self.cavity_radius**2) * self.length / length
        )
        return {
            "length": length,
            "cavity": cavity,
            "outer": float(outer),
            "cap": self.wall * (1.0 + 0.3 * c),
            "base_shift": self.length - length,
            "rv_scale": 1.0 - 0.25 * c,
        }


class _Body:
    """The static surroundings of the heart (mm, relative to the LV axis at the ED mitral plane)."""

    def __init__(self, rng: np.random.Generator) -> None:
        # an oblique short-axis plane cuts the thorax long: the body runs off the bottom of the field
        self.centre = (rng.uniform(50.0, 90.0), rng.uniform(-15.0, 15.0))
        self.axes = (rng.uniform(190.0, 240.0), rng.uniform(138.0, 158.0))  # (rows, columns) semi-axes
        self.angle = rng.uniform(-0.15, 0.15)
        self.fat = rng.uniform(8.0, 16.0)  # subcutaneous fat
        self.muscle = rng.uniform(8.0, 15.0)  # chest wall muscle and ribs
        # diaphragm: a dome (row of its top at depth 0, rise per mm of depth, radius, column of its top)
        self.diaphragm = (
            rng.uniform(50.0, 75.0),
            rng.uniform(0.55, 0.8),
            rng.uniform(110.0, 180.0),
            rng.uniform(-30.0, 10.0),
        )
        self.liver_edge = rng.uniform(10.0, 40.0)  # column where the liver gives way to the stomach
        self.stomach = (
            rng.uniform(25.0, 45.0),
            rng.uniform(35.0, 60.0),
            rng.uniform(22.0, 35.0),
            rng.uniform(28.0, 45.0),
        )
        self.aorta = (rng.uniform(35.0, 60.0), rng.uniform(30.0, 55.0), rng.uniform(10.0, 13.0))
        self.spine = (rng.uniform(20.0, 30.0), rng.uniform(-35.0, -20.0), rng.uniform(15.0, 19.0))
        self.mediastinum = (rng.uniform(38.0, 46.0), rng.uniform(48.0, 58.0))
        # a smooth texture over the abdomen (bowel, vessels): random plane waves (row, column wavenumbers, phase)
        self.waves = [
            (rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.0, 2 * np.pi)) for _ in range(8)
        ]
        self.ribs = rng.uniform(
            0.0, 2 * np.pi / 14
        )  # angular phase of the ribs around the chest wall  # (rows, columns) semi-axes at the base


def _mix(image: np.ndarray, value: float | np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``image`` with ``value`` laid over it with opacity ``alpha`` (in place)."""
    image += alpha * (value - image)
    return image


def _lay_disk(
    image: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    value: float,
    edge: float,
) -> None:
    """Lay a soft disk of ``value`` over ``image`` (in place), computing only the pixels near it.

    ``p``, ``q`` : float64 (Y, X) mm coordinates of a regular grid (rows along Y, columns along X).
    """
    rows, cols = p[:, 0], q[0, :]
    reach = radius + 6.0 * edge
    r0, r1 = np.searchsorted(rows, [centre[0] - reach, centre[0] + reach])
    c0, c1 = np.searchsorted(cols, [centre[1] - reach, centre[1] + reach])
    if r1 <= r0 or c1 <= c0:
        return
    window = (slice(int(r0), int(r1)), slice(int(c0), int(c1)))
    alpha = _sigmoid((radius - np.hypot(rows[window[0], None] - centre[0], cols[None, window[1]] - centre[1])) / edge)
    _mix(image[window], value, alpha)


class _Surroundings:
    """The surroundings of the heart drawn plane by plane; what does not depend on depth is drawn once.

    ``p``, ``q`` : float64 (Y, X) in-plane coordinates in mm of the pixel centres (rows, columns),
    relative to the LV axis at the ED mitral plane.
    """

    def __init__(
        self, body: _Body, heart: _Heart, p: np.ndarray, q: np.ndarray, contrast: dict[str, float], edge: float
    ) -> None:
        self.body, self.heart, self.p, self.q, self.contrast, self.edge = body, heart, p, q, contrast, edge
        pc, qc = p - body.centre[0], q - body.centre[1]
        cos, sin = np.cos(body.angle), np.sin(body.angle)
        rho = np.hypot((pc * cos + qc * sin) / body.axes[0], (qc * cos - pc * sin) / body.axes[1])
        inward = (1.0 - rho) * 0.5 * (body.axes[0] + body.axes[1])  # about the distance from the skin, mm
        image = contrast["fat"] * _sigmoid(inward / edge)
        _mix(image, contrast["muscle"], _sigmoid((inward - body.fat) / edge))
        # ribs: dark bone with a bright marrow core, cut across in the chest wall
        theta = np.arctan2(pc, qc)
        along = np.abs(np.angle(np.exp(1j * 14 * (theta - body.ribs)))) / 14 * 0.5 * (body.axes[0] + body.axes[1])
        across = inward - body.fat - 0.6 * body.muscle
        rib = _sigmoid((1.0 - np.hypot(along / 9.0, across / 4.0)) * 4.0 / edge) * (p < body.centre[0])
        _mix(image, contrast["lung"], rib)
        _mix(image, contrast["marrow"], rib * _sigmoid((1.0 - np.hypot(along / 6.0, across / 2.0)) * 2.0 / edge))
        self.inner = _sigmoid((inward - body.fat - body.muscle) / edge)
        self.static = _mix(image, contrast["tissue"], self.inner)
        self.lung_room = _sigmoid((inward - body.fat - body.muscle - 5.0) / edge)
        texture = sum(np.cos(kp * p + kq * q + phase) for kp, kq, phase in body.waves) / len(body.waves)
        self.abdomen_value = contrast["tissue"] * (1.0 + 0.8 * texture)
        self.liver_side = _sigmoid((body.liver_edge - q) / (3.0 * edge))
        self.liver_value = contrast["liver"] * (1.0 + 0.1 * texture)
        # the spine and, beside it, the bright descending aorta in a little fat, drawn over everything:
        # the layers are affine in what lies under them, so keep them as image -> scale * image + offset
        ap, aq, ar = body.aorta
        vp, vq, vr = ap + body.spine[0], aq + body.spine[1], body.spine[2]
        layers = [
            ((vp, vq), vr + 12.0, contrast["muscle"]),
            ((vp, vq), vr + 1.5, contrast["lung"]),
            ((vp, vq), vr, contrast["marrow"]),
            ((vp + vr + 8.0, vq - 4.0), 8.0, contrast["lung"]),
            ((vp + vr + 8.0, vq - 4.0), 6.0, contrast["fluid"]),  # spinal canal
            ((ap, aq), ar + 3.0, contrast["fat"]),
            ((ap, aq), ar, contrast["blood"]),
        ]
        self.offset, one = np.zeros(p.shape), np.ones(p.shape)
        for centre, radius, value in layers:
            _lay_disk(self.offset, p, q, centre, radius, value, edge)
            _lay_disk(one, p, q, centre, radius, value, edge)
        self.scale = one - self.offset

    def render(self, depth: float, rng: np.random.Generator) -> np.ndarray:
        """Intensity (float64 (Y, X)) of the plane ``depth`` mm below the ED mitral plane (the heart is drawn over it)."""
        body, heart, p, q, contrast, edge = self.body, self.heart, self.p, self.q, self.contrast, self.edge
        image = self.static.copy()
        below_depth = max(depth, 0.0)
        top, rise, radius, column = body.diaphragm
        dome = top - rise * below_depth + (q - column) ** 2 / (2.0 * radius)
        below = _sigmoid((p - dome) / edge)
        # the mediastinum around the heart narrows towards the apex with the heart
        hp, hq = heart.drift * below_depth
        tip = heart.length + heart.wall + 15.0
        scale = max(0.3, np.sqrt(max(0.0, 1.0 - (below_depth / tip) ** 2)))
        a, b = body.mediastinum[0] * scale, body.mediastinum[1] * scale
        mp, mq = hp + 0.25 * a * np.sin(heart.rv_angle), hq + 0.25 * b * np.cos(heart.rv_angle)
        mediastinum = _sigmoid((1.0 - np.hypot((p - mp) / a, (q - mq) / b)) * a / (2.0 * edge))
        lung = self.lung_room * (1.0 - below) * (1.0 - mediastinum)
        _mix(image, contrast["lung"], lung)
        # pulmonary vessels: bright dots inside the lungs
        rows, cols = p[:, 0], q[0, :]
        for _ in range(24):
            cp, cq, r = rng.uniform(-150.0, 150.0), rng.uniform(-150.0, 150.0), rng.uniform(1.5, 3.5)
            i, j = (
                min(int(np.searchsorted(rows, cp)), len(rows) - 1),
                min(int(np.searchsorted(cols, cq)), len(cols) - 1),
            )
            if lung[i, j] > 0.9:
                _lay_disk(image, p, q, (cp, cq), r, 0.7 * contrast["blood"], edge)
        # below the diaphragm: the liver on the image left, the stomach on the right
        abdomen = self.inner * below
        _mix(image, self.abdomen_value, abdomen)
        _mix(image, self.liver_value, abdomen * self.liver_side)
        sp, sq, sa, sb = body.stomach
        centre = (top - rise * below_depth + sp, body.liver_edge + sq)
        r0, r1 = np.searchsorted(rows, [centre[0] - sa - 5.0, centre[0] + sa + 5.0])
        c0, c1 = np.searchsorted(cols, [centre[1] - sb - 5.0, centre[1] + sb + 5.0])
        window = (slice(int(r0), int(r1)), slice(int(c0), int(c1)))
        if r1 > r0 and c1 > c0:
            pw, qw, aw = p[window], q[window], abdomen[window]
            stomach = aw * _sigmoid((1.0 - np.hypot((pw - centre[0]) / sa, (qw - centre[1]) / sb)) * sa / edge)
            _mix(image[window], contrast["muscle"], stomach)
            contents = aw * _sigmoid(
                (1.0 - np.hypot((pw - centre[0]) / (sa - 4.0), (qw - centre[1]) / (sb - 4.0))) * sa / edge
            )
            _mix(image[window], contrast["fluid"], contents)
            _mix(image[window], contrast["lung"], contents * _sigmoid((centre[0] - 0.5 * sa - pw) / edge))  # gas
        image *= self.scale
        image += self.offset
        return image


def _render_plane(
    heart: _Heart,
    shape: dict[str, float],
    depth: float,
    p: np.ndarray,
    q: np.ndarray,
    contrast: dict[str, float],
    edge: float,
    background: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity (float64 (Y, X)) and labels (uint8 (Y, X)) of one plane at ``depth`` mm below the mitral plane.

    ``p``, ``q`` : float64 (Y, X) in-plane coordinates in mm of the pixel centres (rows, columns).
    ``background`` : float64 (Y, X) the surroundings the heart is drawn over (not modified).
    """
    p = p - heart.drift[0] * depth
    q = q - heart.drift[1] * depth
    d = np.hypot(p, q)
    image = background.copy()
    labels = np.zeros(p.shape, dtype=np.uint8)
    length, cap = shape["length"], shape["cap"]

    if depth < 0.0:
        # atria above the mitral plane, the ascending aorta and the pulmonary trunk: blood, no label
        if depth > -heart.atrium_depth - 20.0:
            t = 1.0 - ((depth + heart.atrium_depth / 2) / (heart.atrium_depth / 2)) ** 2
            radius = 0.9 * heart.cavity_radius * np.sqrt(max(t, 0.0))
            ra_centre = heart.cavity_radius + heart.rv_axes[1]
            ao_centre = 0.9 * heart.cavity_radius + 10.0
            pa_centre = heart.cavity_radius + 32.0
            vessels = [
                ((0.0, 0.0), radius),
                ((ra_centre * np.sin(heart.rv_angle), ra_centre * np.cos(heart.rv_angle)), 0.8 * radius),
                ((ao_centre * np.sin(heart.open_angle), ao_centre * np.cos(heart.open_angle)), 13.0),
                ((pa_centre * np.sin(heart.open_angle - 0.5), pa_centre * np.cos(heart.open_angle - 0.5)), 12.0),
            ]
            for grow, value in (
                (2.0 + heart.fat, contrast["fat"]),
                (2.0, contrast["myocardium"]),
                (0.0, contrast["blood"]),
            ):
                for centre, r in vessels:
                    if r > 0.0:
                        _lay_disk(image, p, q, centre, r + grow, value, edge)
        return image, labels

    # LV wall and cavity: half-ellipsoids; the wall reaches one cap thickness beyond the cavity tip
    cavity_r = shape["cavity"] * np.sqrt(max(0.0, 1.0 - (depth / length) ** 2))
    outer_r = shape["outer"] * np.sqrt(max(0.0, 1.0 - (depth / (length + cap)) ** 2))
    # epicardial fat, thickest towards the grooves where the RV meets the LV
    groove = (
        (p * np.cos(heart.rv_angle) - q * np.sin(heart.rv_angle)) / np.maximum(d, 1e-6)
    ) ** 2  # sin^2 of the angle to the RV
    fat_alpha = _sigmoid((outer_r + heart.fat * (0.3 + 0.9 * groove) - d) / edge) if outer_r > 0 else np.zeros_like(d)

    # RV: an ellipse beside the LV, outside the LV wall, ending at 3/4 of the LV length
    rv_length = 0.75 * length
    rv = None
    if depth < rv_length:
        scale = shape["rv_scale"] * np.sqrt(1.0 - (depth / rv_length) ** 2)
        a, b = heart.rv_axes[0] * scale, heart.rv_axes[1] * scale
        centre = outer_r + 0.35 * b
        cy, cx = centre * np.sin(heart.rv_angle), centre * np.cos(heart.rv_angle)
        # ellipse axes: b along the LV-RV direction, a across it (a crescent around the septum)
        u = (q - cx) * np.cos(heart.rv_angle) + (p - cy) * np.sin(heart.rv_angle)
        v = -(q - cx) * np.sin(heart.rv_angle) + (p - cy) * np.cos(heart.rv_angle)
        rho = np.hypot(u / max(b, 1e-6), v / max(a, 1e-6))
        inward = (1.0 - rho) * min(a, b)  # about the distance inside the RV's edge, mm
        outside_lv = _sigmoid((d - outer_r) / edge)
        fat_alpha = np.maximum(fat_alpha, _sigmoid((inward + 2.5 + 0.5 * heart.fat) / edge))
        rv = (_sigmoid((inward + 2.5) / edge) * outside_lv, _sigmoid(inward / edge) * outside_lv)
        labels[(rho < 1.0) & (d >= outer_r)] = 3
    _mix(image, contrast["fat"], fat_alpha)
    if rv is not None:
        _mix(image, contrast["myocardium"], rv[0])  # the thin RV free wall (not labelled, as in ACDC)
        _mix(image, contrast["blood"], rv[1])

    wall_soft = _sigmoid((outer_r - d) / edge) if outer_r > 0 else np.zeros_like(d)
    cavity_soft = _sigmoid((cavity_r - d) / edge) if cavity_r > 0 else np.zeros_like(d)
    wall_mask, cavity_mask = d < outer_r, d < cavity_r
    cavity_value: float | np.ndarray = contrast["blood"]
    if 0.2 * length < depth < 0.75 * length and cavity_r > 0:
        # two papillary muscles, myocardial signal inside the cavity (labelled LVBP, as in ACDC)
        r = heart.papillary * cavity_r
        cavity_value = np.full(p.shape, contrast["blood"])
        for s in (-0.8, 0.8):
            centre = (
                0.6 * cavity_r * np.sin(heart.rv_angle + np.pi + s),
                0.6 * cavity_r * np.cos(heart.rv_angle + np.pi + s),
            )
            _lay_disk(cavity_value, p, q, centre, heart.papillary * cavity_r, contrast["myocardium"], edge)
    if depth < _OPEN_MM:
        # the basal ring opens at the outflow tract: the wedge of wall there is blood pool
        # within a half-angle of the outflow direction: compare cosines (no arctan needed)
        cos_to_outflow = (q * np.cos(heart.open_angle) + p * np.sin(heart.open_angle)) / np.maximum(d, 1e-6)
        wedge = cos_to_outflow > np.cos(0.45 * (1.0 - depth / _OPEN_MM) + 0.1)
        cavity_soft = np.where(wedge, wall_soft, cavity_soft)
        cavity_mask = cavity_mask | (wedge & wall_mask)
    _mix(image, contrast["myocardium"] * (1.0 - cavity_soft) + cavity_value * cavity_soft, wall_soft)
    labels[wall_mask] = 2
    labels[cavity_mask] = 1
    return image, labels


def synthetic_study(
    seed: int = 0,
    *,
    n_slices: int | None = None,
    shape: tuple[int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    n_phases: int = 2,
    apex_first: bool = False,
    noise: float | None = None,
) -> Study:
    """Draw one deterministic synthetic short-axis study with canonical labels.

    Parameters
    ----------
    seed : the seed of the one ``numpy.random.Generator`` behind every random choice.
    n_slices : slice count Z; None chooses one that covers the atria, the heart and one slice
        below the apex.
    shape : in-plane matrix (Y, X); None draws Y in 208 .. 256 and X in 170 .. 240 (as ACDC).
    spacing : (dz, dy, dx) in mm; None draws dz in 8 .. 10 and dy = dx in 1.35 .. 1.8.
    n_phases : 2 gives (ED, ES); more gives a full cine cycle (ED at phase 0, ES at 35 %).
    apex_first : store the slices apex first (reversed), as some exports do.
    noise : Rician noise level as a fraction of the blood signal; None draws 0.02 .. 0.05.

    Returns
    -------
    Study with float32 (Z, Y, X) pixels and uint8 canonical labels on every phase, an RAS+
    affine, trigger times (ms) for a 1000 ms cycle, ``ed_index`` and ``es_index``.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"'seed' must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    heart = _Heart(rng)
    body = _Body(rng)
    if spacing is None:
        pixel = rng.uniform(1.35, 1.8)
        dz, dy, dx = rng.uniform(8.0, 10.0), pixel, pixel
    else:
        dz, dy, dx = check_spacing(spacing)
    ny, nx = (
        (int(rng.integers(208, 257)), int(rng.integers(170, 241))) if shape is None else (int(shape[0]), int(shape[1]))
    )
    if ny < 32 or nx < 32:
        raise InputError(f"'shape' must be at least (32, 32) pixels, got {(ny, nx)}")
    contractions, es_index = contraction_curve(n_phases)
    noise_level = rng.uniform(0.02, 0.05) if noise is None else float(noise)
    if not 0.0 <= noise_level < 1.0:
        raise InputError(f"'noise' must be a fraction in [0, 1), got {noise!r}")
    # cine bSSFP contrast, relative to the myocardium: blood and fat bright, lungs and air dark
    myocardium = rng.uniform(1.0, 8.0) * 100.0 * rng.uniform(0.5, 0.8)
    blood = myocardium * rng.uniform(2.6, 3.6)
    contrast = {
        "myocardium": myocardium,
        "blood": blood,
        "fat": blood * rng.uniform(0.9, 1.2),
        "muscle": myocardium * rng.uniform(0.8, 1.0),
        "tissue": myocardium * rng.uniform(1.1, 1.5),
        "liver": myocardium * rng.uniform(1.1, 1.5),
        "lung": myocardium * rng.uniform(0.08, 0.2),
        "marrow": myocardium * rng.uniform(1.6, 2.2),
        "fluid": blood * rng.uniform(0.7, 1.0),
    }

    # slice 0 sits one to two slices above the mitral plane (atria); the stack ends below the apex
    first_depth = -rng.uniform(1.0, 1.6) * dz
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
    # a smooth coil-sensitivity bias field (brighter towards the coils), the same for every phase
    tilt = rng.uniform(-0.5, 0.5, size=2)
    bias = np.exp(tilt[0] * p / 150.0 + tilt[1] * q / 150.0 - rng.uniform(0.1, 0.4) * (p**2 + q**2) / 150.0**2)
    # the heart is drawn only in a box around the LV axis, over the once-drawn surroundings
    reach = 90.0 + 0.06 * (heart.length + heart.wall)
    box = (
        slice(int(np.searchsorted(rows, -reach)), int(np.searchsorted(rows, reach))),
        slice(int(np.searchsorted(cols, -reach)), int(np.searchsorted(cols, reach))),
    )
    pb, qb = p[box], q[box]

    affine = _affine(seed=int(seed), spacing=(dz, dy, dx), shape=(z_count, ny, nx), apex_first=apex_first)
    # each slice centre along the DICOM normal (row x column direction), as the readers compute it
    normal = np.cross(affine[:3, 2], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    positions = (affine[:3, 3] + np.outer(np.arange(z_count), affine[:3, 0])) @ normal

    around = _Surroundings(body, heart, p, q, contrast, edge)
    surroundings = [around.render(first_depth + z * dz, rng) for z in range(z_count)]
    sigma = noise_level * contrast["blood"]
    stacks = []
    for index, c in enumerate(contractions):
        state = heart.shape_at(float(c))
        images = np.empty((z_count, ny, nx), dtype=np.float32)
        labels = np.zeros((z_count, ny, nx), dtype=np.uint8)
        for z in range(z_count):
            # depth below the (moving) mitral plane of this slice's centre
            centre_depth = first_depth + z * dz - state["base_shift"]
            signal = surroundings[z].copy()
            under = signal[box]
            planes = [
                _render_plane(heart, state, centre_depth + o * dz, pb, qb, contrast, edge, under) for o in _SUBPLANES
            ]
            signal[box] = np.mean([plane[0] for plane in planes], axis=0)
            signal *= bias
            real, imaginary = rng.standard_normal((2, ny, nx), dtype=np.float32)
            images[z] = np.hypot(signal.astype(np.float32) + np.float32(sigma) * real, np.float32(sigma) * imaginary)
            labels[z][box] = planes[1][1]
        if apex_first:
            images, labels = images[::-1].copy(), labels[::-1].copy()
        phase = "ED" if index == 0 else "ES" if index == es_index else f"frame {index}"
        stacks.append(
            Stack(
                pixels=images,
                spacing=(dz, dy, dx),
                affine=affine,
                labels=labels,
                slice_positions=positions,
                phase=phase,
                source=f"synthetic seed {seed}",
            )
        )
    if n_phases == 2:
        times = np.array([0.0, 1000.0 * 0.35])
    else:
        times = np.arange(n_phases, dtype=np.float64) * 1000.0 / n_phases
    info = StudyInfo(
        patient_id=f"SYNTH{seed:06d}",
        manufacturer="cmrsdk synthetic",
        field_strength_t=1.5,
        series_description="SAX cine (synthetic)",
        group="synthetic",
        source=f"synthetic seed {seed}",
    )
    return Study(phases=tuple(stacks), ed_index=0, es_index=es_index, trigger_times_ms=times, info=info)


def _affine(
    *, seed: int, spacing: tuple[float, float, float], shape: tuple[int, int, int], apex_first: bool
) -> np.ndarray:
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
