"""A short-axis bSSFP cine phantom that looks like cardiac MRI, with its exact ground truth.

The embedded example study (``cmrsdk demo``): one deterministic cine from a seed, drawn to look
like a real short-axis balanced-SSFP acquisition of a healthy adult, so that the demo shows the
pipeline as it behaves on a real study. (`cmrsdk.synth` keeps the simpler cartoon that unit tests
and the training mix use.)

What is drawn, in mm, in the short-axis plane as a reader sees it (anterior up, the patient's
right, where the RV lies, on the left), with depth ``s`` below the mitral plane along the LV
long axis:

- LV: a cavity and a wall that narrow from the base to the apex (profile ``1 - (s/L)^2.4``);
  an irregular endocardial border lined by small dark trabeculae; two papillary muscles
  (anterolateral, posteromedial) in the middle third; the cavity, papillary muscles and
  trabeculae are all labelled LV blood pool, as ACDC's manual contours have them.
- RV: a crescent wrapping the septum, bounded by an ellipse beside the LV; a thin dark free
  wall; it ends at about 80 % of the LV length.
- Epicardial fat, thickest in the grooves where the RV meets the LV. Above the mitral plane, as
  a basal cut shows them: the left atrium (wide, behind), the right atrium, the aortic root and
  the outflow tract, blood pools with thin walls side by side, no label (an atrium drawn as a
  round pool in a dark ring where the LV lies was labelled LV by the shipped bundle).
- Surroundings: skin, subcutaneous fat, chest-wall muscle and ribs, lungs with bright vessels,
  the diaphragm rising towards the apex with the liver (reader's left) and the stomach
  (reader's right, food of intermediate signal) beneath it, the descending aorta and the spine behind the heart, a smooth
  tissue texture.
- Planning as in ACDC: the first slice just below the ED mitral plane, the last below the apex.
- Motion over the cycle (``n_phases`` >= 20 frames): contraction to ES at about 35 % of the RR
  interval, rapid filling, diastasis and the atrial kick; the wall thickens (myocardial volume
  kept); the mitral plane descends towards the still apex by about 13 % of the LV length, so a
  basal slice holds ventricle at ED and atrium at ES (through-plane motion).
- Imaging: k-space acquired at 60-75 % of the matrix in the phase direction and 75-90 % in the
  readout, zero-filled (the slight blur and ringing of a real reconstruction); blood about 3 x myocardium, fat nearly as bright as blood, lungs and air dark;
  slices 8 mm thick every 10 mm, each the mean of three sub-planes across its thickness (partial volume at
  the base and the apex); edges soft within a pixel; a smooth coil-sensitivity bias field
  (brighter near the anterior and posterior coils); Rician noise (the magnitude of complex
  Gaussian noise).

Arrays are stored as ACDC stores its short-axis frames (the reader's orientation), and the
affine places them in a patient: the long axis from base to apex points to the patient's
left, anterior and inferior; array rows run posterior-inferior, columns to the patient's left.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .regions import APEX_RAS
from .types import Stack, Study, StudyInfo

__all__ = ["cine_phantom", "cycle_contraction"]

_SUBPLANES_MM = (-2.7, 0.0, 2.7)  # across an 8 mm slice
_SHORTENING = 0.13  # fraction of the LV length lost from the base at ES
_LONG_AXIS = APEX_RAS  # base -> apex, RAS+: the direction the region rule trusts in an affine


def cycle_contraction(n_phases: int, es_fraction: float = 0.35) -> np.ndarray:
    """Contraction per frame, float64 (T,): 0 at ED (frame 0), 1 at ES, then filling; (0, 1) for two frames.

    Systole is a half cosine to ``es_fraction`` of the cycle; diastole falls to 0.25 by 55 %
    (rapid filling), 0.18 by 80 % (diastasis) and 0 at the next ED (atrial contraction).
    """
    if n_phases < 2:
        raise InputError(f"'n_phases' must be at least 2, got {n_phases}")
    if n_phases == 2:
        return np.array([0.0, 1.0])
    t = np.arange(n_phases, dtype=np.float64) / n_phases
    knots_t = [es_fraction, 0.55, 0.80, 1.0]
    knots_c = [1.0, 0.25, 0.18, 0.0]
    systole = 0.5 * (1.0 - np.cos(np.pi * np.clip(t / es_fraction, 0.0, 1.0)))
    diastole = np.interp(t, knots_t, knots_c)
    # smooth the diastolic corners a little, as a real filling curve has no kinks
    return np.where(t <= es_fraction, systole, diastole)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _mix(image: np.ndarray, value: float | np.ndarray, alpha: np.ndarray) -> None:
    """Lay ``value`` over ``image`` with opacity ``alpha`` (in place)."""
    image += alpha * (value - image)


def _disk(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    value: float,
    edge: float,
    opacity: float = 1.0,
) -> None:
    """Lay a soft disk of ``value`` over ``image`` (in place), touching only the pixels near it.

    ``rows``, ``cols`` : float64 (Y,), (X,) mm coordinates of the image's pixel centres.
    """
    reach = radius + 4.0 * edge
    r0, r1 = np.searchsorted(rows, [centre[0] - reach, centre[0] + reach])
    c0, c1 = np.searchsorted(cols, [centre[1] - reach, centre[1] + reach])
    if r1 <= r0 or c1 <= c0:
        return
    window = image[r0:r1, c0:c1]
    d = np.hypot(rows[r0:r1, None] - centre[0], cols[None, c0:c1] - centre[1])
    _mix(window, value, opacity * _sigmoid((radius - d) / edge))


def _texture(rng: np.random.Generator, p: np.ndarray, q: np.ndarray, waves: int, scale_mm: float) -> np.ndarray:
    """A smooth random texture in about [-1, 1]: the mean of random plane waves of wavelength near ``scale_mm``."""
    out = np.zeros(p.shape)
    for _ in range(waves):
        k = 2 * np.pi / (scale_mm * rng.uniform(0.6, 1.6))
        angle = rng.uniform(0, 2 * np.pi)
        out += np.cos(k * (np.cos(angle) * q + np.sin(angle) * p) + rng.uniform(0, 2 * np.pi))
    return out * np.sqrt(2.0 / waves)


class _Anatomy:
    """One subject's heart and surroundings (mm; p down = posterior-inferior, q right = patient's left)."""

    def __init__(self, rng: np.random.Generator, layer_rng: np.random.Generator) -> None:
        self.cavity = rng.uniform(23.0, 26.0)  # basal endocardial radius at ED
        self.wall = rng.uniform(7.5, 9.5)  # wall thickness at ED
        self.length = rng.uniform(82.0, 92.0)  # mitral plane to the endocardial apex at ED
        self.rv_width = rng.uniform(0.85, 1.0)  # RV crescent width at the septum / epicardial radius
        self.rv_squeeze = rng.uniform(0.28, 0.34)  # RV width lost at ES
        self.fat = rng.uniform(3.0, 6.0)
        self.papillary = rng.uniform(0.15, 0.19)  # papillary radius / cavity radius
        self.harmonics = [(k, rng.uniform(0.005, 0.02), rng.uniform(0, 2 * np.pi)) for k in range(5, 15)]
        self.trabeculae = [
            (rng.uniform(0.0, 2 * np.pi), rng.uniform(0.82, 0.95), rng.uniform(1.0, 1.9), rng.uniform(0.15, 0.85))
            for _ in range(16)
        ]
        # the trabecular layer lining the whole endocardium: many small islands within the outer
        # tenth of the cavity, inside the contour as ACDC draws it (without it the bundle drew the
        # blood pool about a millimetre wider than the truth). Its own generator keeps every
        # other draw as it was.
        self.trabeculae += [
            (layer_rng.uniform(0.0, 2 * np.pi), layer_rng.uniform(0.88, 0.98), layer_rng.uniform(0.8, 1.4), 0.0)
            for _ in range(40)
        ]
        # surroundings
        # the body cut obliquely: long in the rows, running off the bottom of the field
        self.body = (
            rng.uniform(60.0, 80.0),
            rng.uniform(-10.0, 10.0),
            rng.uniform(230.0, 260.0),
            rng.uniform(165.0, 185.0),
        )
        self.subcutaneous = rng.uniform(8.0, 16.0)
        self.muscle = rng.uniform(9.0, 14.0)
        self.diaphragm = (rng.uniform(55.0, 70.0), rng.uniform(0.5, 0.7), rng.uniform(120.0, 170.0))
        self.aorta = (rng.uniform(50.0, 62.0), rng.uniform(28.0, 40.0), rng.uniform(10.0, 12.5))
        self.spine = (rng.uniform(80.0, 95.0), rng.uniform(-5.0, 10.0), rng.uniform(16.0, 19.0))
        self.vessels = [(rng.uniform(-150, 150), rng.uniform(-160, 160), rng.uniform(1.2, 3.0)) for _ in range(40)]
        self.hepatic = [(rng.uniform(60, 200), rng.uniform(-160, 20), rng.uniform(2.0, 5.0)) for _ in range(14)]
        self.bowel = [
            (rng.uniform(90, 220), rng.uniform(20, 160), rng.uniform(6.0, 14.0), rng.uniform(0.3, 1.0))
            for _ in range(14)
        ]

    def shape(self, c: float) -> dict[str, float]:
        """The LV and RV at contraction ``c`` (0 ED, 1 ES)."""
        length = self.length * (1.0 - _SHORTENING * c)
        cavity = self.cavity * (1.0 - 0.37 * c)
        # the myocardial cross-section grows as the cavity and the length shrink: volume kept
        outer = float(np.sqrt(cavity**2 + ((self.cavity + self.wall) ** 2 - self.cavity**2) * self.length / length))
        return {
            "length": length,
            "cavity": cavity,
            "outer": outer,
            "cap": self.wall * (1.0 + 0.25 * c),
            "base_shift": self.length - length,
            "rv_width": self.rv_width * (1.0 - self.rv_squeeze * c),
            "c": c,
        }


def _surroundings(
    a: _Anatomy, p: np.ndarray, q: np.ndarray, depth: float, tone: dict[str, float], texture: np.ndarray, edge: float
) -> np.ndarray:
    """Intensity (float64 (Y, X)) of everything but the heart, in the plane ``depth`` mm below the ED mitral plane."""
    bp, bq, ba, bb = a.body
    rho = np.hypot((p - bp) / ba, (q - bq) / bb)
    inward = (1.0 - rho) * 0.5 * (ba + bb)  # about the depth under the skin, mm
    image = tone["fat"] * _sigmoid(inward / edge) * (1.0 + 0.05 * texture)
    _mix(image, tone["muscle"] * (1.0 + 0.08 * texture), _sigmoid((inward - a.subcutaneous) / edge))
    inner = _sigmoid((inward - a.subcutaneous - a.muscle) / edge)
    # ribs: dark cortex with bright marrow, cut across in the chest wall, front and sides only
    theta = np.arctan2(p - bp, q - bq)
    along = np.abs(np.angle(np.exp(1j * 16 * theta))) / 16 * 0.5 * (ba + bb)
    across = inward - a.subcutaneous - 0.55 * a.muscle
    rib = _sigmoid((1.0 - np.hypot(along / 10.0, across / 4.5)) * 4.5 / edge) * (p < 40.0)
    _mix(image, tone["bone"], rib)
    _mix(image, tone["marrow"], rib * _sigmoid((1.0 - np.hypot(along / 7.0, across / 2.5)) * 2.5 / edge))
    _mix(image, tone["tissue"] * (1.0 + 0.12 * texture), inner)
    # the diaphragm: a dome whose top rises towards the heart in more apical (more inferior) planes
    top, rise, radius = a.diaphragm
    dome = top - rise * max(depth, 0.0) + (q + 10.0) ** 2 / (2.0 * radius)
    below = _sigmoid((p - dome) / edge) * inner
    # lungs: the thorax minus the mediastinum around the heart, above the diaphragm
    shrink = max(0.45, np.sqrt(max(0.0, 1.0 - (max(depth, 0.0) / (a.length + 25.0)) ** 2)))
    medi = _sigmoid((1.0 - np.hypot((p + 4.0) / (47.0 * shrink), (q + 14.0) / (62.0 * shrink))) * 30.0 / edge)
    _mix(image, tone["tissue"] * (1.0 + 0.15 * texture), medi * inner * (1.0 - below))
    lung = _sigmoid((inward - a.subcutaneous - a.muscle - 4.0) / edge) * (1.0 - below) * (1.0 - medi)
    _mix(image, tone["lung"] * (1.0 + 0.3 * texture), lung)
    rows, cols = p[:, 0], q[0, :]
    for vp, vq, vr in a.vessels:
        i, j = min(int(np.searchsorted(rows, vp)), len(rows) - 1), min(int(np.searchsorted(cols, vq)), len(cols) - 1)
        if lung[i, j] > 0.9:
            _disk(image, rows, cols, (vp, vq), vr, tone["blood"] * 0.55, edge)
    # the liver under the dome on the reader's left (patient's right), the stomach on the right
    liver = below * _sigmoid((25.0 - q) / (4.0 * edge))
    _mix(image, tone["liver"] * (1.0 + 0.05 * texture), liver)
    # hepatic vessels bright in the liver; bowel loops of mixed signal beside the stomach
    for vp, vq, vr in a.hepatic:
        i, j = min(int(np.searchsorted(rows, vp)), len(rows) - 1), min(int(np.searchsorted(cols, vq)), len(cols) - 1)
        if liver[i, j] > 0.9:
            _disk(image, rows, cols, (vp, vq), vr, tone["blood"] * 0.8, edge)
    for bp_, bq_, br, level in a.bowel:
        i, j = min(int(np.searchsorted(rows, bp_)), len(rows) - 1), min(int(np.searchsorted(cols, bq_)), len(cols) - 1)
        if below[i, j] > 0.9 and liver[i, j] < 0.1:
            _disk(image, rows, cols, (bp_, bq_), br + 2.0, tone["muscle"], edge)
            _disk(image, rows, cols, (bp_, bq_), br, tone["fluid"] * level, edge)
    # the diaphragm itself: a thin dark muscle band along the dome
    _mix(image, tone["muscle"], inner * np.exp(-(((p - dome) / 2.5) ** 2)))
    stomach = (
        below * (1.0 - liver) * _sigmoid((1.0 - np.hypot((p - dome - 30.0) / 32.0, (q - 70.0) / 40.0)) * 25.0 / edge)
    )
    # a fed stomach: food of intermediate, mottled signal (a fluid-filled one, as bright as blood
    # under a dark diaphragm, the apex U-Net took for a ventricle)
    _mix(image, 0.5 * tone["fluid"] * (1.0 + 0.2 * texture), stomach)
    _mix(image, tone["lung"], stomach * _sigmoid((dome + 16.0 - p) / edge))  # gas above the fluid
    # the descending aorta and the spine behind the heart
    ap, aq, ar = a.aorta
    d = np.hypot(p - ap, q - aq)
    _mix(image, tone["fat"], _sigmoid((ar + 3.0 - d) / edge))
    _mix(image, tone["blood"] * 0.95, _sigmoid((ar - d) / edge))
    sp, sq, sr = a.spine
    d = np.hypot(p - sp, q - sq)
    _mix(image, tone["bone"], _sigmoid((sr + 1.5 - d) / edge))
    _mix(image, tone["marrow"] * (1.0 + 0.1 * texture), _sigmoid((sr - d) / edge))
    return image


class _Plane:
    """What does not change between the planes of the heart's box: coordinates and angles (mm, radians)."""

    def __init__(self, a: _Anatomy, rows: np.ndarray, cols: np.ndarray) -> None:
        self.rows, self.cols = rows, cols
        self.p, self.q = np.meshgrid(rows, cols, indexing="ij")
        self.d = np.hypot(self.p, self.q)
        self.theta = np.arctan2(self.p, self.q)
        self.irregular = 1.0 + sum(amp * np.cos(k * self.theta + phase) for k, amp, phase in a.harmonics)
        self.groove = np.sin(self.theta) ** 8  # straight up and down: where the RV meets the LV
        # towards the aortic outflow: up and towards the septum
        self.outflow = -0.8 * np.sin(self.theta) - 0.6 * np.cos(self.theta)
        self.flow = np.cos(0.15 * self.p + 0.1 * self.q)


def _heart(
    a: _Anatomy,
    s: dict[str, float],
    depth: float,
    g: _Plane,
    tone: dict[str, float],
    edge: float,
    image: np.ndarray,
    want_labels: bool,
) -> np.ndarray | None:
    """Draw the heart of the plane ``depth`` mm below the (moving) mitral plane over ``image`` (in place).

    Returns uint8 labels of the plane when ``want_labels``, else None.
    """
    p, q, d = g.p, g.q, g.d
    labels = np.zeros(p.shape, np.uint8) if want_labels else None
    length, cap = s["length"], s["cap"]
    if depth < 0.0:
        # above the mitral plane, as a basal short-axis cut shows it: the aortic root in the
        # middle, the left atrium behind it (below in the image), the right atrium behind and
        # to the reader's left, the right ventricular outflow tract and pulmonary trunk in front;
        # thin-walled blood pools in mediastinal fat, no label, as in ACDC. None of them wears
        # the thick dark ring of ventricular myocardium.
        if depth > -45.0:
            grow = np.sqrt(max(0.0, 1.0 - ((depth + 20.0) / 24.0) ** 2))
            # (centre p, q), (half-axes p, q) in mm; adjacent chambers share a thin wall
            pools = [
                ((14.0, 6.0), (17.0 * grow, 25.0 * grow)),  # left atrium, wide and flat
                ((5.0, -33.0), (20.0 * grow, 15.0 * grow)),  # right atrium
                ((-15.0, -4.0), (12.5, 12.5)),  # aortic root
                ((-27.0, -30.0), (10.0, 15.0)),  # outflow tract / pulmonary trunk
            ]
            pools = [(c, r) for c, r in pools if min(r) > 2.0]
            for grow_mm, value in ((2.0 + 0.3 * a.fat, tone["fat"]), (1.2, tone["tissue"]), (0.0, None)):
                for (cp, cq), (rp, rq) in pools:
                    inside = (1.0 - np.hypot((p - cp) / (rp + grow_mm), (q - cq) / (rq + grow_mm))) * min(rp, rq)
                    _mix(
                        image,
                        tone["blood"] * (1.0 + 0.04 * g.flow) if value is None else value,
                        _sigmoid(inside / edge),
                    )
        return labels

    def profile(total: float) -> float:
        return max(0.0, 1.0 - (depth / total) ** 2.4) ** 0.5

    r_mean = s["cavity"] * profile(length)
    cavity_r = r_mean * g.irregular
    outer_r = s["outer"] * profile(length + cap)
    if outer_r <= 0.0:
        return labels
    # epicardial fat, thickest in the grooves
    _mix(image, tone["fat"], _sigmoid((outer_r + a.fat * (0.25 + 1.2 * g.groove) - d) / edge))

    # the RV: inside an ellipse on the reader's left, outside the LV wall (a crescent on the septum)
    rv_end = 0.8 * length
    if depth < rv_end:
        taper = np.sqrt(max(0.0, 1.0 - (depth / rv_end) ** 2))
        width = s["rv_width"] * outer_r * taper * (1.12 if depth < 12.0 else 1.0)
        cq, cp = -0.75 * outer_r, -0.15 * outer_r
        aq = 0.25 * outer_r + width
        ap = 1.25 * outer_r * (0.6 + 0.4 * taper)
        rho = np.hypot((q - cq) / aq, (p - cp) / ap)
        inside = (1.0 - rho) * min(aq, ap)  # about the distance inside the RV's edge, mm
        outside_lv = _sigmoid((d - outer_r) / edge)
        _mix(image, tone["fat"], _sigmoid((inside + 3.0 + a.fat) / edge) * outside_lv)
        _mix(image, tone["myocardium"], _sigmoid((inside + 3.0) / edge) * outside_lv)  # RV free wall, unlabelled
        _mix(image, tone["blood"] * (1.0 + 0.04 * g.flow), _sigmoid(inside / edge) * outside_lv)
        if depth > 0.4 * length:
            # the moderator band: a dark strand across the apical RV
            band = np.abs((q - cq + 0.3 * aq) * 0.8 + (p - cp) * 0.6) < 1.5
            _mix(image, tone["myocardium"], 0.7 * band * _sigmoid(inside / edge) * outside_lv)
        if labels is not None:
            labels[(rho < 1.0) & (d >= outer_r)] = 3

    wall = _sigmoid((outer_r - d) / edge)
    cavity = _sigmoid((cavity_r - d) / edge) if r_mean > 0.0 else np.zeros_like(d)
    cavity_value = tone["blood"] * (1.0 + 0.05 * g.flow)
    if r_mean > 0.0:
        # papillary muscles in the middle third, thicker when contracted, standing on the wall
        if 0.22 * length < depth < 0.75 * length:
            for angle in (-0.8, 1.95):  # anterolateral (up right), posteromedial (down)
                r = a.papillary * r_mean * (1.0 + 0.35 * s["c"])
                centre = ((r_mean - 1.2 * r) * np.sin(angle), (r_mean - 1.2 * r) * np.cos(angle))
                _disk(cavity_value, g.rows, g.cols, centre, r, tone["myocardium"], edge)
        # trabeculae: small dark islands along the endocardium, more of them towards the apex
        for angle, frac, radius, where in a.trabeculae:
            if depth > where * length * 0.8:
                centre = (frac * r_mean * np.sin(angle), frac * r_mean * np.cos(angle))
                _disk(cavity_value, g.rows, g.cols, centre, radius, tone["myocardium"], edge, 0.85)
    if depth < 9.0:
        # the basal ring opens towards the aortic outflow: blood pool there
        wedge = g.outflow > np.cos(0.5 * (1.0 - depth / 9.0) + 0.05)
        cavity = np.where(wedge, wall, cavity)
        if labels is not None:
            labels[wedge & (d < outer_r)] = 1
    _mix(image, tone["myocardium"] * (1.0 - cavity) + cavity_value * cavity, wall)
    if labels is not None:
        labels[(d < outer_r) & (labels != 1)] = 2
        labels[d < cavity_r] = 1
    return labels


def cine_phantom(seed: int = 0, *, n_phases: int = 25, noise: float | None = None) -> Study:
    """Draw the deterministic bSSFP short-axis cine phantom of ``seed`` with its ground truth.

    Parameters
    ----------
    seed : the seed of the one ``numpy.random.Generator`` behind every random choice.
    n_phases : frames over one RR interval (at least 20 for a cine; 2 gives ED and ES only).
    noise : Rician noise level as a fraction of the blood signal; None draws 0.03 .. 0.05.

    Returns
    -------
    Study with float32 (Z, Y, X) pixels in scanner units (0 .. about 1500) and uint8 canonical
    labels (0 bg, 1 LVBP, 2 LVM, 3 RVBP) on every frame, an RAS+ affine, trigger times (ms),
    ``ed_index`` 0 and ``es_index`` the frame of the smallest labelled LV volume, height and
    weight in ``info``.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"'seed' must be a non-negative integer, got {seed!r}")
    if not isinstance(n_phases, (int, np.integer)) or n_phases < 2:
        raise InputError(f"'n_phases' must be an integer of at least 2, got {n_phases!r}")
    rng = np.random.default_rng([int(seed), 18])
    a = _Anatomy(rng, np.random.default_rng([int(seed), 18, 1]))
    dy = dx = float(rng.choice([1.367, 1.406, 1.5625]))
    dz = 10.0
    ny, nx = int(round(rng.uniform(320.0, 350.0) / dy)) // 2 * 2, int(round(rng.uniform(260.0, 290.0) / dx)) // 2 * 2
    noise_level = rng.uniform(0.03, 0.05) if noise is None else float(noise)
    if not 0.0 <= noise_level < 1.0:
        raise InputError(f"'noise' must be a fraction in [0, 1), got {noise!r}")
    scale = rng.uniform(700.0, 1100.0)
    myocardium = rng.uniform(0.28, 0.34)
    tone = {
        "blood": 1.0,
        "myocardium": myocardium,
        "fat": rng.uniform(0.8, 0.95),
        "muscle": myocardium * 0.95,
        "tissue": rng.uniform(0.42, 0.5),
        "liver": rng.uniform(0.38, 0.46),
        "lung": 0.035,
        "bone": 0.06,
        "marrow": rng.uniform(0.6, 0.75),
        "fluid": rng.uniform(0.7, 0.85),
    }
    tone = {k: v * scale for k, v in tone.items()}

    # planned as ACDC's stacks are: the first slice just below the ED mitral plane (its 8 mm slab
    # starts 0-2 mm under the annulus) so that at ES, with the base descended by about one slice
    # gap, it shows atrium; down to one slice below the apex
    first = 5.0 + rng.uniform(-1.0, 1.0)
    z_count = int(np.ceil((a.length + a.wall + 6.0 - first) / dz)) + 1
    offset = np.array([rng.uniform(-25.0, -10.0), rng.uniform(-12.0, 12.0)])  # the heart a little above centre
    rows = (np.arange(ny) - (ny - 1) / 2) * dy - offset[0]
    cols = (np.arange(nx) - (nx - 1) / 2) * dx - offset[1]
    p, q = np.meshgrid(rows, cols, indexing="ij")
    edge = 0.45 * dy
    texture = _texture(rng, p, q, 10, 40.0)
    # coil sensitivity: anterior and posterior arrays, a lateral tilt; about 1 at the heart
    bias = (0.85 + 0.2 * np.exp(-(((p + 170.0) / 110.0) ** 2)) + 0.15 * np.exp(-(((p - 200.0) / 110.0) ** 2))) * np.exp(
        rng.uniform(-0.15, 0.15) * q / 150.0
    )
    bias /= bias[np.argmin(np.abs(rows)), np.argmin(np.abs(cols))]
    # the heart changes only in a box around the LV axis
    box = (
        slice(int(np.searchsorted(rows, -100.0)), int(np.searchsorted(rows, 90.0))),
        slice(int(np.searchsorted(cols, -110.0)), int(np.searchsorted(cols, 85.0))),
    )
    plane = _Plane(a, rows[box[0]], cols[box[1]])
    # the surroundings change slowly with depth: one rendering per slice serves its sub-planes
    static = [_surroundings(a, p, q, first + z * dz, tone, texture, edge) for z in range(z_count)]

    kspace = _kspace_window(ny, nx, rng.uniform(0.6, 0.75), rng.uniform(0.75, 0.9))
    contraction = cycle_contraction(n_phases)
    sigma = np.float32(noise_level * tone["blood"])
    affine = _affine(dz, dy, dx, (z_count, ny, nx))
    stacks, lv_volumes = [], []
    for c in contraction:
        s = a.shape(float(c))
        images = np.empty((z_count, ny, nx), np.float32)
        labels = np.zeros((z_count, ny, nx), np.uint8)
        for z in range(z_count):
            signal = static[z].copy()
            heart = np.zeros(plane.p.shape)
            for o in _SUBPLANES_MM:
                under = static[z][box].copy()
                lab = _heart(a, s, first + z * dz + o - s["base_shift"], plane, tone, edge, under, o == 0.0)
                heart += under
                if lab is not None:
                    labels[z][box] = lab
            signal[box] = heart / len(_SUBPLANES_MM)
            signal *= bias
            # acquired at a lower matrix than reconstructed: keep the central k-space, zero-fill the rest
            signal = np.fft.irfft2(np.fft.rfft2(signal) * kspace, s=signal.shape)
            real, imaginary = rng.standard_normal((2, ny, nx), dtype=np.float32)
            images[z] = np.hypot(signal.astype(np.float32) + sigma * real, sigma * imaginary)
        lv_volumes.append(int((labels == 1).sum()))
        stacks.append((images, labels))
    es_index = int(np.argmin(lv_volumes))
    rr = rng.uniform(850.0, 1000.0)
    positions = np.arange(z_count) * dz
    phases = tuple(
        Stack(
            pixels=im,
            spacing=(dz, dy, dx),
            affine=affine,
            labels=lab,
            slice_positions=positions,
            phase="ED" if t == 0 else "ES" if t == es_index else f"frame {t}",
            source=f"phantom seed {seed}",
        )
        for t, (im, lab) in enumerate(stacks)
    )
    info = StudyInfo(
        patient_id=f"PHANTOM{seed:04d}",
        manufacturer="cmrsdk phantom",
        field_strength_t=1.5,
        series_description="SAX cine bSSFP (synthetic phantom)",
        height_cm=round(rng.uniform(165.0, 185.0)),
        weight_kg=round(rng.uniform(62.0, 85.0)),
        group="NOR",
        source=f"phantom seed {seed}",
    )
    return Study(
        phases=phases, ed_index=0, es_index=es_index, trigger_times_ms=np.arange(n_phases) * rr / n_phases, info=info
    )


def _kspace_window(ny: int, nx: int, phase_fraction: float, read_fraction: float) -> np.ndarray:
    """float64 (ny, nx // 2 + 1) weights of `numpy.fft.rfft2` coefficients: the acquired centre of k-space.

    Rows are the phase-encoding direction (fewer lines acquired, ``phase_fraction``), columns the
    readout (``read_fraction``); a short cosine taper at the edge softens, not removes, the Gibbs
    ringing a real zero-filled reconstruction shows.
    """
    ky = np.abs(np.fft.fftfreq(ny)) * 2.0  # 0 at the centre, 1 at the edge of k-space
    kx = np.abs(np.fft.rfftfreq(nx)) * 2.0

    def weights(k: np.ndarray, keep: float) -> np.ndarray:
        # 1 inside 85 % of the kept band, a half cosine down to 0 at its edge, 0 beyond
        ramp = np.clip((k - 0.85 * keep) / (0.15 * keep), 0.0, 1.0)
        return 0.5 * (1.0 + np.cos(np.pi * ramp)) * (k <= keep)

    wy, wx = weights(ky, phase_fraction), weights(kx, read_fraction)
    return wy[:, None] * wx[None, :]


def _affine(dz: float, dy: float, dx: float, shape: tuple[int, int, int]) -> np.ndarray:
    """float64 (4, 4) (z, y, x) -> RAS+ mm: z base to apex, y posterior-inferior, x to the patient's left."""
    down = np.array([0.0, -1.0, -1.0]) / np.sqrt(2.0)  # lies in the short-axis plane of this long axis
    right = np.cross(down, -_LONG_AXIS)  # viewed from the apex: right x down = into the screen
    affine = np.eye(4)
    affine[:3, 0] = _LONG_AXIS * dz
    affine[:3, 1] = down * dy
    affine[:3, 2] = right * dx
    centre = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, (shape[2] - 1) / 2])
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine
