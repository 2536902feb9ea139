"""Region-classifier probabilities over held-out slices, where the classifiers were trained.

For classifiers too large to carry off a GPU machine (VGG11-BN is 515 MB, AlexNet 228 MB),
their held-out predictions travel instead. The slices are the pack of
``python -m export.portable pack-heldout`` (preprocessed as the pipeline does); the output
is one ``.npz`` with ``cases``, ``phases``, ``z`` and ``regions`` (ground truth) of the N
slices and, per run, float32 (N, 4) softmax probabilities under the run's name.

    python -m export.predict .gpu/heldout.npz.xz runs/classifier_* -o predictions.npz
    python -m export.predict .gpu/heldout.npz.xz runs/classifier_resnet18 -o predictions.npz --update

``--update`` replaces (or adds) the named runs' probabilities in an existing file of the same
slices and keeps the others'.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

from .portable import unpack
from .train import _predict, load_trained_model

__all__ = ["classifier_probabilities", "main"]


def classifier_probabilities(
    checkpoint: str | Path, images: np.ndarray, *, device: str = "cpu", batch: int = 64
) -> np.ndarray:
    """Softmax over regions, float32 (N, 4), of a classifier checkpoint on float32 (N, H, W) slices."""
    model, meta = load_trained_model(checkpoint, map_location="cpu")
    if meta["task"] != "classification":
        raise ValueError(f"{checkpoint} is a {meta['task']} checkpoint, not a region classifier")
    logits = _predict(model.to(device), images, torch.device(device), batch)
    return torch.softmax(logits.float(), dim=1).numpy().astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.predict", description=__doc__.split("\n")[0])
    parser.add_argument("heldout", help="slice pack of export.portable pack-heldout")
    parser.add_argument("runs", nargs="+", help="classification run directories holding last.pt (or model.pt)")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--update", action="store_true", help="keep the other runs' probabilities of an existing output"
    )
    args = parser.parse_args(argv)
    slices = unpack(args.heldout)
    arrays = {"cases": slices.cases, "phases": slices.phases, "z": slices.z, "regions": slices.regions}
    if args.update and Path(args.output).is_file():
        existing = dict(np.load(args.output))
        for key in ("cases", "phases", "z"):
            if not np.array_equal(existing[key], arrays[key]):
                parser.error(f"--update: {args.output} holds other slices than {args.heldout} ('{key}' differs)")
        arrays = {**existing, **arrays}
    for run in args.runs:
        weights = Path(run) / "last.pt" if (Path(run) / "last.pt").is_file() else Path(run) / "model.pt"
        arrays[Path(run).name] = classifier_probabilities(weights, slices.images, device=args.device)
        accuracy = float((arrays[Path(run).name].argmax(1) == slices.regions).mean())
        print(f"{Path(run).name}: {len(slices)} held-out slices, accuracy {accuracy:.3f}")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = Path(args.output).with_name(Path(args.output).name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
