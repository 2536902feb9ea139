"""Training and export toolchain for cmrsdk (needs torch and torchvision).

The runtime package ``cmrsdk`` never imports this package: it loads the artifacts that
``export`` writes. Modules:

- ``export.models``: model builders (2D U-Net, seven torchvision classifiers) and a registry.
- ``export.data``: ACDC slice datasets, preprocessed once with cmrsdk's native core and
  cached on disk; patient-level train / validation / test split.
- ``export.samplers``: uniform, foreground-oversampling and region-aware slice samplers.
- ``export.augment``: on-the-fly augmentation vectorised over the batch (torch).
- ``export.losses``: Dice + cross-entropy with deep supervision.
- ``export.train``: the trainer and its command line (``python -m export.train CONFIG``).
"""

from __future__ import annotations

__all__: list[str] = []
