"""ACDC slice datasets, preprocessed once with cmrsdk's native core and cached on disk.

Every ED and ES stack of the cached patients is read with :func:`cmrsdk.io.read_acdc_patient`,
resampled in-plane to one target spacing, normalised (robust z-score by default) and
cropped or padded to ``size`` x ``size`` around the resampled image centre with
:func:`cmrsdk.preprocess.prepare_slices` (the very function the runtime pipeline calls, so
training sees what inference sees); the labels go through ``resample_labels`` (nearest) and
``crop_or_pad`` onto the same window. Each slice keeps its case, phase, ground-truth region
and base-to-apex position t (:mod:`cmrsdk.regions`, computed on the native label map).

Splits (:func:`split_patients`)
-------------------------------
- test: every ``test_every``-th patient by number (ACDC patient005, 010, ..., 100 for the
  default 5: 20 patients, 4 of each of the 5 diagnosis groups since ACDC lists the groups
  in blocks of 20). They are never cached nor trained on; the evaluation reads them raw.
- validation: a seeded random ``val_fraction`` of the remaining patients.
- train: the rest. The target spacing is the median in-plane spacing of the train patients.
- a training subset (:func:`training_subset`, ``[data] train_patients``): the first n of the
  train patients in a seeded order that interleaves ACDC's diagnosis groups, so every group keeps
  its share and a smaller subset lies inside a larger one (the learning curve's nested draws).

Cache layout (a directory, written under a temporary name and renamed)
---------------------------------------------------------------------
``images.npy`` float32 (N, H, W) normalised slices; ``labels.npy`` uint8 (N, H, W)
canonical labels; ``index.npz`` with ``cases`` str (N,), ``phases`` str (N,) "ED"/"ES",
``regions`` uint8 (N,), ``positions`` float64 (N,) (NaN for non-cardiac slices), ``z``
int64 (N,) slice index in its stack; ``meta.json`` with the build parameters (target
spacing (dy, dx) mm, size, normalisation, splits).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrsdk.errors import InputError, ReadError
from cmrsdk.types import Stack

__all__ = [
    "synthetic_study_slices",
    "concatenate",
    "stack_slices",
    "CACHE_VERSION",
    "SliceSet",
    "acdc_patients",
    "split_patients",
    "training_subset",
    "prepare_stack",
    "build_cache",
    "write_cache",
    "load_cache",
    "open_cache",
    "synthetic_slices",
]

#: bumped whenever the cache content or layout changes, so stale caches are rebuilt.
CACHE_VERSION = 1


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Preprocessed 2D slices with their labels and provenance.

    Attributes
    ----------
    images : float32 (N, H, W) normalised slices at ``meta["target_spacing"]`` (dy, dx) mm, or
        (N, C, H, W) with each slice's stack neighbours (:meth:`with_context`).
    labels : uint8 (N, H, W) canonical labels (0 bg, 1 LVBP, 2 LVM, 3 RVBP).
    cases : str (N,) patient identifier of each slice.
    phases : str (N,) "ED" or "ES".
    regions : uint8 (N,) 0 non-cardiac, 1 base, 2 middle, 3 apex.
    positions : float64 (N,) base (0) to apex (1) position, NaN for non-cardiac slices.
    z : int64 (N,) index of the slice in its stack.
    meta : build parameters (see the module docstring).
    """

    images: np.ndarray
    labels: np.ndarray
    cases: np.ndarray
    phases: np.ndarray
    regions: np.ndarray
    positions: np.ndarray
    z: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_foreground(self) -> np.ndarray:
        """bool (N,): the slice holds a label (computed from the regions, which say the same)."""
        return self.regions != 0

    def subset(self, indices: np.ndarray) -> "SliceSet":
        """The slices at ``indices`` (int (M,) or bool (N,)), loaded into memory."""
        index = np.asarray(indices)
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        return SliceSet(
            np.ascontiguousarray(self.images[index]),
            np.ascontiguousarray(self.labels[index]),
            self.cases[index],
            self.phases[index],
            self.regions[index],
            self.positions[index],
            self.z[index],
            dict(self.meta),
        )

    def neighbours(self, context: int) -> np.ndarray:
        """int64 (N, 2 context + 1) indices of each slice's stack neighbours z - context .. z + context.

        A neighbour beyond either end of the stack repeats the end slice, as the runtime pipeline's
        `cmrsdk.preprocess.context_slices` does. Stacks are the (case, phase) pairs; the set must
        hold whole stacks (take neighbours before selecting regions).
        """
        if context < 0:
            raise InputError(f"'context' must be >= 0, got {context}")
        index = np.empty((len(self), 2 * context + 1), np.int64)
        keys = np.char.add(np.char.add(self.cases.astype(str), " "), self.phases.astype(str))
        for key in np.unique(keys):
            members = np.flatnonzero(keys == key)
            ordered = members[np.argsort(self.z[members], kind="stable")]
            if not np.array_equal(self.z[ordered], np.arange(len(ordered))):
                raise InputError(f"stack {key} is incomplete: its slices z are {self.z[ordered]}")
            offsets = np.clip(np.arange(len(ordered))[:, None] + np.arange(-context, context + 1), 0, len(ordered) - 1)
            index[ordered] = ordered[offsets]
        return index

    def heart_centres(self) -> np.ndarray:
        """float64 (N, 2) each slice's heart centre (row, column) in pixel indices: the centroid of
        every labelled pixel of its stack (case, phase), so that the slices above and below the
        heart share it as they share the pipeline's heart crop; NaN for a stack without labels."""
        centres = np.full((len(self), 2), np.nan)
        keys = np.char.add(np.char.add(self.cases.astype(str), " "), self.phases.astype(str))
        for key in np.unique(keys):
            members = np.flatnonzero(keys == key)
            pixels = np.argwhere(np.asarray(self.labels[members]) > 0)  # (slice, row, column)
            if len(pixels):
                centres[members] = pixels[:, 1:].mean(0)
        return centres

    def with_context(self, context: int) -> "SliceSet":
        """2.5D input: the set with float32 (N, 2 context + 1, H, W) images, each slice between its
        stack neighbours in z order (:meth:`neighbours`); context 0 returns the set as it is."""
        if context == 0:
            return self
        images = np.asarray(self.images)[self.neighbours(context)]
        return SliceSet(
            images, self.labels, self.cases, self.phases, self.regions, self.positions, self.z, dict(self.meta)
        )

    def select(self, *, cases: Iterable[str] | None = None, regions: Iterable[int] | None = None) -> "SliceSet":
        """The slices of the given ``cases`` and / or ``regions`` (None: all)."""
        mask = np.ones(len(self), dtype=bool)
        if cases is not None:
            mask &= np.isin(self.cases, np.asarray(list(cases)))
        if regions is not None:
            mask &= np.isin(self.regions, np.asarray(list(regions), dtype=np.uint8))
        return self.subset(mask)


def acdc_patients(root: str | Path) -> list[str]:
    """The ACDC patient folders under ``root`` (or ``root/training``), sorted by name."""
    root = Path(root)
    folder = root / "training" if (root / "training").is_dir() else root
    patients = sorted(p.name for p in folder.glob("patient[0-9][0-9][0-9]") if p.is_dir())
    if not patients:
        raise ReadError(folder, "holds no ACDC 'patientNNN' folder")
    return patients


def _patient_folder(root: Path, patient: str) -> Path:
    return root / "training" / patient if (root / "training").is_dir() else root / patient


def patient_number(patient: str) -> int:
    """The number a patient identifier ends in ("patient042" -> 42)."""
    digits = "".join(ch for ch in reversed(patient) if ch.isdigit())[::-1]
    if not digits or not patient.endswith(digits):
        raise InputError(f"patient identifier {patient!r} does not end in its number")
    return int(digits)


def split_patients(
    patients: Sequence[str], *, test_every: int = 5, val_fraction: float = 0.15, seed: int = 0
) -> dict[str, list[str]]:
    """A fixed, seeded, patient-level split into "train", "val" and "test".

    Parameters
    ----------
    patients : identifiers ending in their number ("patient042").
    test_every : a patient whose number is a multiple of this goes to "test" (0: no test split).
    val_fraction : share of the non-test patients drawn (seeded) for "val".
    seed : seed of the validation draw.
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"'val_fraction' must lie in [0, 1), got {val_fraction}")
    if test_every < 0:
        raise InputError(f"'test_every' must be >= 0, got {test_every}")

    ordered = sorted(patients)
    test = [p for p in ordered if test_every and patient_number(p) % test_every == 0]
    rest = [p for p in ordered if p not in test]
    n_val = int(round(val_fraction * len(rest)))
    val_index = set(np.random.default_rng(seed).choice(len(rest), size=n_val, replace=False).tolist())
    return {
        "train": [p for i, p in enumerate(rest) if i not in val_index],
        "val": [p for i, p in enumerate(rest) if i in val_index],
        "test": test,
    }


def training_subset(patients: Sequence[str], n: int, *, seed: int = 0, group_size: int = 20) -> list[str]:
    """The first ``n`` of ``patients`` in a seeded order that interleaves their diagnosis groups.

    ACDC lists its 5 diagnosis groups in blocks of ``group_size`` patients (001-020, 021-040, ...).
    Each group is shuffled (seeded) and patient i of a group of m is ranked (i + 0.5) / m, so the
    first n patients hold each group in proportion, and the subset for a smaller n lies inside
    the subset for a larger one.

    Parameters
    ----------
    patients : identifiers ending in their number (a split's "train" list).
    n : how many to keep, 1 <= n <= len(patients).
    seed : seed of the shuffle within each group.
    group_size : patients per diagnosis group in the numbering.
    """
    if not 1 <= n <= len(patients):
        raise InputError(f"'train_patients' must lie in [1, {len(patients)}] (the training split), got {n}")
    groups: dict[int, list[str]] = {}
    for patient in sorted(patients):
        groups.setdefault((patient_number(patient) - 1) // group_size, []).append(patient)
    rng = np.random.default_rng(seed)
    ranked = []
    for group, members in sorted(groups.items()):
        order = rng.permutation(len(members))
        ranked += [((rank + 0.5) / len(members), group, members[i]) for rank, i in enumerate(order)]
    return sorted(patient for _, _, patient in sorted(ranked)[:n])


def prepare_stack(
    stack: Stack,
    *,
    target_spacing: tuple[float, float],
    size: int,
    normalization: str = "robust_zscore",
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Preprocess one labelled stack as the runtime pipeline does.

    Parameters
    ----------
    stack : a Stack with ``labels`` (uint8 (Z, Y, X) canonical).
    target_spacing : (dy, dx) in mm; size : side of the square window in pixels.
    normalization : as :func:`cmrsdk.preprocess.normalize`.

    Returns
    -------
    images float32 (Z, size, size), labels uint8 (Z, size, size), regions uint8 (Z,),
    positions float64 (Z,) (NaN for non-cardiac slices).
    """
    from cmrsdk.preprocess import crop_or_pad, prepare_slices, resample_labels
    from cmrsdk.regions import slice_positions, slice_regions

    if stack.labels is None:
        raise InputError(f"stack from {stack.source or 'memory'} has no labels to train on")
    spacing_yx = (stack.spacing[1], stack.spacing[2])
    images, transform = prepare_slices(
        stack.pixels,
        spacing_yx,
        target_spacing=target_spacing,
        size=(size, size),
        normalization=normalization,
        threads=threads,
    )
    resampled = resample_labels(stack.labels, spacing_yx, shape=transform.resampled_shape, threads=threads)
    labels, offset = crop_or_pad(resampled, (size, size))
    if tuple(offset) != tuple(transform.offset):
        # both crop around the resampled image centre; a mismatch would misalign labels silently
        raise InputError(
            f"label window offset {tuple(offset)} differs from the image window offset "
            f"{tuple(transform.offset)} for {stack.source}"
        )
    return (
        np.ascontiguousarray(images[:, 0], dtype=np.float32),
        np.ascontiguousarray(labels, dtype=np.uint8),
        slice_regions(stack.labels),
        slice_positions(stack.labels),
    )


def stack_slices(
    stacks: Iterable[tuple[str, str, Stack]],
    *,
    target_spacing: tuple[float, float],
    size: int,
    normalization: str = "robust_zscore",
    threads: int | None = None,
    meta: dict[str, Any] | None = None,
) -> SliceSet:
    """The slices of labelled stacks, each prepared by :func:`prepare_stack`, as one SliceSet.

    stacks : (case, phase, Stack) triples; every slice keeps its case, phase and index z.
    meta : the set's metadata (default: target spacing, size and normalisation).
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("images", "labels", "cases", "phases", "regions", "positions", "z")
    }
    for case, phase, stack in stacks:
        images, labels, regions, positions = prepare_stack(
            stack, target_spacing=target_spacing, size=size, normalization=normalization, threads=threads
        )
        n = images.shape[0]
        for key, value in (
            ("images", images),
            ("labels", labels),
            ("regions", regions),
            ("positions", positions),
            ("z", np.arange(n, dtype=np.int64)),
            ("cases", np.full(n, case)),
            ("phases", np.full(n, phase)),
        ):
            parts[key].append(value)
    a = {k: np.concatenate(v) for k, v in parts.items()}
    meta = (
        {"target_spacing": list(target_spacing), "size": int(size), "normalization": normalization}
        if meta is None
        else meta
    )
    return SliceSet(
        a["images"],
        a["labels"],
        a["cases"].astype(str),
        a["phases"].astype(str),
        a["regions"],
        a["positions"],
        a["z"],
        meta,
    )


def build_cache(
    root: str | Path,
    cache_dir: str | Path,
    *,
    splits: dict[str, list[str]],
    size: int = 224,
    normalization: str = "robust_zscore",
    target_spacing: tuple[float, float] | None = None,
    threads: int | None = None,
) -> SliceSet:
    """Preprocess the "train" and "val" patients of ``splits`` and write the cache.

    The target spacing, when not given, is the median in-plane (dy, dx) spacing of the
    "train" patients' stacks. Returns the cache as loaded by :func:`load_cache`.
    """
    from cmrsdk.io import read_acdc_patient

    root, cache_dir = Path(root), Path(cache_dir)
    patients = sorted(splits["train"] + splits["val"])
    started = time.perf_counter()
    studies = {p: read_acdc_patient(_patient_folder(root, p)) for p in patients}
    if target_spacing is None:
        spacings = np.array([s.spacing[1:] for p in splits["train"] for s in (studies[p].ed, studies[p].es)])
        target_spacing = (float(np.median(spacings[:, 0])), float(np.median(spacings[:, 1])))
    stacks = ((p, phase, studies[p].ed if phase == "ED" else studies[p].es) for p in patients for phase in ("ED", "ES"))
    slices = stack_slices(
        stacks, target_spacing=target_spacing, size=size, normalization=normalization, threads=threads
    )
    slices.meta.update(
        {
            "version": CACHE_VERSION,
            "source": str(root),
            "splits": splits,
            "slices": len(slices),
            "build_seconds": round(time.perf_counter() - started, 1),
        }
    )
    return write_cache(cache_dir, slices)


def write_cache(cache_dir: str | Path, slices: SliceSet) -> SliceSet:
    """Write ``slices`` as a cache directory (atomically: a temporary name, then a rename).

    Returns the cache as loaded by :func:`load_cache`.
    """
    cache_dir = Path(cache_dir)
    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "images.npy", np.asarray(slices.images, dtype=np.float32))
    np.save(tmp / "labels.npy", np.asarray(slices.labels, dtype=np.uint8))
    np.savez(
        tmp / "index.npz",
        cases=slices.cases.astype(str),
        phases=slices.phases.astype(str),
        regions=slices.regions.astype(np.uint8),
        positions=slices.positions.astype(np.float64),
        z=slices.z.astype(np.int64),
    )
    (tmp / "meta.json").write_text(json.dumps({**slices.meta, "version": CACHE_VERSION}, indent=1))
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    os.replace(tmp, cache_dir)
    return load_cache(cache_dir)


def load_cache(cache_dir: str | Path, *, mmap: bool = True) -> SliceSet:
    """Open a cache written by :func:`build_cache` (images memory-mapped unless ``mmap=False``)."""
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / "meta.json"
    if not meta_path.is_file():
        raise ReadError(cache_dir, "is not a slice cache (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != CACHE_VERSION:
        raise ReadError(meta_path, f"cache 'version' is {meta.get('version')!r}, expected {CACHE_VERSION}")
    index = np.load(cache_dir / "index.npz")
    mode = "r" if mmap else None
    return SliceSet(
        np.load(cache_dir / "images.npy", mmap_mode=mode),
        np.load(cache_dir / "labels.npy", mmap_mode=mode),
        index["cases"],
        index["phases"],
        index["regions"],
        index["positions"],
        index["z"],
        meta,
    )


def open_cache(
    root: str | Path,
    cache_dir: str | Path,
    *,
    size: int = 224,
    normalization: str = "robust_zscore",
    test_every: int = 5,
    val_fraction: float = 0.15,
    seed: int = 0,
    threads: int | None = None,
) -> SliceSet:
    """Load the cache when it was built with these parameters, else (re)build it.

    The split is recomputed from the patients under ``root`` and must equal the cached one.
    """
    cache_dir = Path(cache_dir)
    if not Path(root).is_dir() and (cache_dir / "meta.json").is_file():
        # a cache carried to another machine without the raw data (export.portable): trusted when
        # its build parameters match and its split honours test_every (no test patient inside)
        cached = load_cache(cache_dir)
        held_out = [c for c in np.unique(cached.cases) if test_every and patient_number(str(c)) % test_every == 0]
        if cached.meta.get("size") != size or cached.meta.get("normalization") != normalization or held_out:
            raise ReadError(
                cache_dir,
                f"does not match the configuration (size {cached.meta.get('size')}, "
                f"normalization {cached.meta.get('normalization')!r}, test patients "
                f"{held_out[:3]}) and {root} is not there to rebuild it",
            )
        return cached
    splits = split_patients(acdc_patients(root), test_every=test_every, val_fraction=val_fraction, seed=seed)
    if (cache_dir / "meta.json").is_file():
        try:
            cached = load_cache(cache_dir)
        except ReadError:
            cached = None
        if (
            cached is not None
            and cached.meta.get("splits") == splits
            and cached.meta.get("size") == size
            and cached.meta.get("normalization") == normalization
        ):
            return cached
    return build_cache(root, cache_dir, splits=splits, size=size, normalization=normalization, threads=threads)


def synthetic_study_slices(
    n_studies: int,
    *,
    target_spacing: tuple[float, float],
    size: int,
    normalization: str = "robust_zscore",
    first_seed: int = 1000,
    threads: int | None = None,
) -> SliceSet:
    """ED and ES slices of ``n_studies`` `cmrsdk.synth` studies, preprocessed as the ACDC cache is.

    Seeds ``first_seed`` .. ``first_seed + n_studies - 1`` (the embedded example uses seed 0, so
    the demo never trains on the study it shows). Mixed into the training set of a run whose
    ``[data] synthetic_studies`` is set, so that a model also knows the synthetic phantom.
    """
    from cmrsdk.synth import synthetic_study

    def stacks():
        for seed in range(first_seed, first_seed + n_studies):
            study = synthetic_study(seed=seed)
            yield f"synthetic{seed}", "ED", study.ed
            yield f"synthetic{seed}", "ES", study.es

    return stack_slices(
        stacks(),
        target_spacing=target_spacing,
        size=size,
        normalization=normalization,
        threads=threads,
        meta={
            "target_spacing": list(target_spacing),
            "size": size,
            "normalization": normalization,
            "synthetic_studies": n_studies,
            "first_seed": first_seed,
        },
    )


def concatenate(first: SliceSet, second: SliceSet) -> SliceSet:
    """The slices of both sets (in memory), with the first set's metadata."""
    return SliceSet(
        *(
            np.concatenate([getattr(first, k), getattr(second, k)])
            for k in ("images", "labels", "cases", "phases", "regions", "positions", "z")
        ),
        dict(first.meta),
    )


def synthetic_slices(n: int, *, size: int = 64, seed: int = 0) -> SliceSet:
    """Labelled synthetic slices for tests and smoke runs: ``n`` slices of ``size`` x ``size``.

    Each slice draws a random heart: an LV blood pool disc (1) in a myocardial ring (2) with an
    RV crescent (3) beside it, on a noisy background, normalised to zero mean and unit
    standard deviation; one slice in four is non-cardiac (no heart). Cardiac slices get
    positions t evenly spread in [0, 1] and the 20/60/20 regions that follow from them;
    the heart shrinks towards the apex as real ones do.
    """
    if n < 1 or size < 16:
        raise InputError(f"'n' must be >= 1 and 'size' >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    images = np.empty((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    cardiac = (np.arange(n) % 4) != 3
    positions = np.full(n, np.nan)
    positions[cardiac] = np.linspace(0, 1, int(cardiac.sum()))
    regions = np.zeros(n, np.uint8)
    t = positions[cardiac]
    regions[cardiac] = np.where(t < 0.2, 1, np.where(t > 0.8, 3, 2))
    for i in range(n):
        image = rng.normal(0.2, 0.1, (size, size))
        if cardiac[i]:
            shrink = 1.0 - 0.5 * positions[i]
            cy, cx = size / 2 + rng.uniform(-size / 10, size / 10, 2)
            r = size * 0.12 * shrink * rng.uniform(0.85, 1.15)
            d_lv = np.hypot(yy - cy, xx - cx)
            d_rv = np.hypot(yy - cy, xx - (cx - 1.9 * r))
            labels[i][(d_rv < 1.5 * r) & (d_lv >= 1.45 * r)] = 3
            labels[i][(d_lv >= r) & (d_lv < 1.45 * r)] = 2
            labels[i][d_lv < r] = 1
            image += np.choose(labels[i], [0.0, 0.8, -0.1, 0.7]) + rng.normal(0, 0.05, (size, size))
        images[i] = ((image - image.mean()) / image.std()).astype(np.float32)
    return SliceSet(
        images,
        labels,
        np.array([f"synthetic{i // 8:03d}" for i in range(n)]),
        np.array(["ED" if (i // 4) % 2 == 0 else "ES" for i in range(n)]),
        regions,
        positions,
        np.arange(n, dtype=np.int64) % 4,
        {"target_spacing": [1.0, 1.0], "size": size, "normalization": "zscore", "synthetic": True},
    )
