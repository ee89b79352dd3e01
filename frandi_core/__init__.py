"""FRanDI, the method: synthetic data from BN statistics, compression, Feature Regression, Output Discrepancy.

Usable on its own from Python; knows nothing of Optuna or databases.
"""

from __future__ import annotations

from ._actquant import (
    CALIBRATIONS,
    ActQuantizer,
    activation_quantizers,
    fake_quantize_act,
    quantize_activations_,
    remove_activation_quantizers_,
)
from ._bops import bops, layer_macs
from ._compress import Compressor, SizeReport, compress, fake_quantize, magnitude_mask, model_size, strip_
from ._errors import FrandiError
from ._hooks import capture
from ._losses import batch_stats, bn_kl, normalized_distance, od_from_outputs, total_variation
from ._model import ModelSpec, build_architecture, load_model, read_state_dict, weights_digest
from ._optim import adam
from ._policy import LayerInfo, LayerSetting, Policy, compressible_layers
from ._recover import (
    OUTPUT,
    NonFiniteError,
    RecoveryConfig,
    TeacherTargets,
    default_feature_layers,
    feature_regression_,
    model_outputs,
    output_discrepancy,
    teacher_targets,
)
from ._synth import SynthConfig, SyntheticData, bn_kl_loss, bn_names, invert, synthesize

__all__ = [
    "adam",
    "CALIBRATIONS",
    "OUTPUT",
    "ActQuantizer",
    "Compressor",
    "FrandiError",
    "LayerInfo",
    "LayerSetting",
    "ModelSpec",
    "NonFiniteError",
    "Policy",
    "RecoveryConfig",
    "SizeReport",
    "SynthConfig",
    "SyntheticData",
    "TeacherTargets",
    "activation_quantizers",
    "batch_stats",
    "bn_kl",
    "bn_kl_loss",
    "bn_names",
    "bops",
    "build_architecture",
    "capture",
    "compress",
    "compressible_layers",
    "default_feature_layers",
    "fake_quantize",
    "fake_quantize_act",
    "feature_regression_",
    "invert",
    "layer_macs",
    "load_model",
    "magnitude_mask",
    "model_outputs",
    "model_size",
    "normalized_distance",
    "od_from_outputs",
    "output_discrepancy",
    "quantize_activations_",
    "read_state_dict",
    "remove_activation_quantizers_",
    "strip_",
    "synthesize",
    "teacher_targets",
    "total_variation",
    "weights_digest",
]
