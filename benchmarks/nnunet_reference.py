"""nnU-Net v2's own predictor on the same ED+ES pairs, for benchmarks/pipeline_latency.py.

Needs the ``nnunetv2`` package (``pip install cmrsdk[bench]``, nnunetv2==2.8.1). The predictor is
built the way nnU-Net's trainer builds it for its final validation
(``nnUNetPredictor.manual_initialization``) from an in-memory plans dict that describes a 2D
configuration equal to the bundle's baseline U-Net:

- patch size = the bundle's network window (H, W); spacing = its target in-plane spacing (dy, dx);
- ``PlainConvUNet`` (dynamic_network_architectures) with the baseline's features per stage, two
  3x3 convolutions per stage, stride-2 downsampling, InstanceNorm (affine), LeakyReLU(0.01),
  no deep supervision, 4 output classes;
- ``ZScoreNormalization`` (no mask), nnU-Net's default resampling (order 3 data, order 1
  probabilities), its default inference: Gaussian sliding window with tile step 0.5, batch size
  one tile, test-time mirroring on both in-plane axes unless ``mirroring=False``.

The baseline's trained weights are copied in when the two networks' parameters map one to one
(their shapes compared in order, role by role) and the copy reproduces the baseline's logits;
nnU-Net's transposed convolutions have a bias that cmrsdk's lack, so those biases are set to zero,
which computes the same function. Otherwise the nnU-Net network keeps its random initialisation
(same architecture, hence the same cost) and the note says so. The note also gives both networks'
FLOPs on one (1, 1, H, W) window (``torch.utils.flop_counter``).

Each ED and ES stack goes through ``nnUNetPredictor.predict_single_npy_array`` on the CPU, in this
process (no worker processes), with nnU-Net's preprocessing (crop to non-zero, normalisation,
resampling), its sliding window and its resampling of the logits back to the native grid.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["build_plans", "build_predictor", "time_nnunet"]

#: nnU-Net's labels for the bundle's four classes (cmrsdk.labels order)
_LABELS = {"background": 0, "LVBP": 1, "LVM": 2, "RVBP": 3}


def _quiet():
    """nnunetv2 prints on import (unset nnUNet_* paths) and when given a CPU device."""
    return contextlib.redirect_stdout(io.StringIO())


def build_plans(size: Sequence[int], spacing: Sequence[float], features: Sequence[int]) -> dict:
    """A plans dict (nnU-Net v2 format) with one 2D configuration, ``"2d"``.

    Parameters
    ----------
    size : (H, W) patch size in pixels.
    spacing : (dy, dx) target in-plane spacing in mm.
    features : channels per resolution stage, highest resolution first.
    """
    n = len(features)
    resample_data = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    resample_seg = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    resample_prob = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_2d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 1,
        "patch_size": [int(s) for s in size],
        "median_image_size_in_voxels": [int(s) for s in size],
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resample_data,
        "resampling_fn_seg_kwargs": resample_seg,
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": resample_prob,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n,
                "features_per_stage": [int(f) for f in features],
                "conv_op": "torch.nn.modules.conv.Conv2d",
                "kernel_sizes": [[3, 3]] * n,
                "strides": [[1, 1]] + [[2, 2]] * (n - 1),
                "n_conv_per_stage": [2] * n,
                "n_conv_per_stage_decoder": [2] * (n - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": True,
    }
    intensity = {
        "max": 1.0,
        "mean": 0.0,
        "median": 0.0,
        "min": 0.0,
        "percentile_00_5": 0.0,
        "percentile_99_5": 1.0,
        "std": 1.0,
    }  # used by CTNormalization only
    return {
        "dataset_name": "Dataset001_cmrsdk",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [10.0, float(spacing[0]), float(spacing[1])],
        "original_median_shape_after_transp": [10, int(size[0]), int(size[1])],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"2d": config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": intensity},
    }


def _dataset_json() -> dict:
    return {"channel_names": {"0": "cineMRI"}, "labels": dict(_LABELS), "numTraining": 0, "file_ending": ".nii.gz"}


def _roles_cmrsdk(net) -> list:
    """The baseline's parameters in forward order, by role: encoder, up-convolutions, decoder, head."""
    params = [p for stage in net.encoder for p in stage.parameters()]
    for up, stage in zip(net.ups, net.decoder):
        params += [*up.parameters(), *stage.parameters()]
    return params + list(net.head.parameters())


def _roles_nnunet(net) -> list:
    """The same roles in PlainConvUNet (transposed-convolution biases excluded: set to zero)."""
    params = [p for stage in net.encoder.stages for p in stage.parameters()]
    for up, stage in zip(net.decoder.transpconvs, net.decoder.stages):
        params += [up.weight, *stage.parameters()]
    return params + list(net.decoder.seg_layers[-1].parameters())


def _copy_weights(source, target, window: tuple[int, int]) -> str | None:
    """Copy the cmrsdk U-Net's weights into the PlainConvUNet; the reason when they do not map."""
    import torch

    try:
        src = _roles_cmrsdk(source)
    except AttributeError as exc:
        return f"not an export.models U-Net: {exc}"
    dst = _roles_nnunet(target)
    if len(src) != len(dst):
        return f"{len(src)} vs {len(dst)} parameter tensors"
    for i, (a, b) in enumerate(zip(src, dst)):
        if a.shape != b.shape:
            return f"parameter {i}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    with torch.no_grad():
        for a, b in zip(src, dst):
            b.copy_(a)
        for up in target.decoder.transpconvs:
            if up.bias is not None:
                up.bias.zero_()
        x = torch.randn(1, 1, *window, generator=torch.Generator().manual_seed(0))
        diff = float((source.eval()(x) - target.eval()(x)).abs().max())
    return None if diff < 1e-3 else f"logits differ by {diff:.2g} after the copy"


def _flops(net, window: tuple[int, int]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net.eval()(torch.zeros(1, 1, *window))
    return counter.get_total_flops()


def build_predictor(ref, *, mirroring: bool):
    """An ``nnUNetPredictor`` (CPU) for the bundle's baseline U-Net, and the note on its weights."""
    import torch

    with _quiet():
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = ref.bundle.routing[0]
    spec = ref.bundle.models[name].record["training"]["config"]["model"]
    if spec["name"] != "unet":
        raise ValueError(f"baseline model {name!r} is a {spec['name']!r}, expected a 'unet' to describe to nnU-Net")
    baseline = ref.models[name].net  # the export.models U-Net inside the ProbabilityModel
    features = [int(f) for f in spec.get("kwargs", {}).get("features", baseline.features)]
    window = tuple(int(s) for s in ref.size)

    plans_manager = PlansManager(build_plans(window, ref.spacing, features))
    configuration = plans_manager.get_configuration("2d")
    dataset_json = _dataset_json()
    label_manager = plans_manager.get_label_manager(dataset_json)
    arch = configuration.network_arch_init_kwargs
    network = get_network_from_plans(
        configuration.network_arch_class_name,
        arch,
        configuration.network_arch_init_kwargs_req_import,
        1,
        label_manager.num_segmentation_heads,
        deep_supervision=False,
    )
    why_not = _copy_weights(baseline, network, window)
    if why_not is None:
        weights = f"same weights as {name!r}"
    else:
        # the copy may have half-happened: start again from nnU-Net's own initialisation
        network = get_network_from_plans(
            configuration.network_arch_class_name,
            arch,
            configuration.network_arch_init_kwargs_req_import,
            1,
            label_manager.num_segmentation_heads,
            deep_supervision=False,
        )
        weights = f"random weights of the same architecture as {name!r} ({why_not})"
    flops_nnunet, flops_cmrsdk = _flops(network, window), _flops(baseline, window)
    note = (
        f"{weights}; {flops_nnunet / 1e9:.3f} vs {flops_cmrsdk / 1e9:.3f} GFLOP per "
        f"{window[0]}x{window[1]} window for nnU-Net vs cmrsdk"
    )

    with _quiet():
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=False,
            device=torch.device("cpu"),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
    # mirroring axes as nnU-Net's 2D trainer allows them: both in-plane axes
    predictor.manual_initialization(
        network, plans_manager, configuration, [network.state_dict()], dataset_json, "nnUNetTrainer", (0, 1)
    )
    return predictor, note


def time_nnunet(ref, pairs, *, mirroring: bool, threads: int, repeats: int) -> tuple[float, str]:
    """Median milliseconds per ED+ES pair of nnU-Net v2's predictor, and a note on its weights.

    Parameters
    ----------
    ref : benchmarks/pipeline_latency.py's ReferencePipeline (bundle, eager models, size, spacing).
    pairs : (case name, cmrsdk.Study) with ``ed`` and ``es`` stacks, pixels float32 (Z, Y, X),
        spacing (dz, dy, dx) in mm.
    mirroring : nnU-Net's test-time mirroring (its default) or not.
    threads : torch intra-op threads.
    repeats : timed runs after one warm-up; the median of (total over all pairs / pairs).
    """
    import torch

    torch.set_num_threads(threads)
    predictor, note = build_predictor(ref, mirroring=mirroring)

    def run_all() -> None:
        for _, study in pairs:
            for stack in (study.ed, study.es):
                image = np.ascontiguousarray(stack.pixels, dtype=np.float32)[None]  # (1, Z, Y, X)
                labels = predictor.predict_single_npy_array(image, {"spacing": [float(s) for s in stack.spacing]})
                if labels.shape != stack.shape:
                    raise RuntimeError(f"nnU-Net returned labels of shape {labels.shape}, expected {stack.shape}")

    run_all()  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        run_all()
        times.append((time.perf_counter() - t) * 1000.0 / len(pairs))
    return statistics.median(times), note
