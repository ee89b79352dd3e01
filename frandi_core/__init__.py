"""FRanDI, the method: synthetic data from BN statistics, compression, Feature Regression, Output Discrepancy.

The paper's equations (FRanDI: Sobolev, Ermilov, Kozyrskiy, Phan), one short function each:

- eq. 1, KL of a BN layer's batch statistics against its running ones: ``bn_kl``; summed over a model's BN
  layers by ``bn_kl_loss``; ``synthesize`` makes the synthetic batches by minimizing it over the inputs.
- eq. 2, the Feature Regression loss (student features against the teacher's, each L2-normalized):
  ``feature_loss``; ``feature_regression_`` minimizes it over a compressed student's weights.
- eq. 3, Output Discrepancy (normalized outputs, the label-free score): ``od_from_outputs``; of a model on the
  held-out batch: ``output_discrepancy``.

A whole policy in a few lines: ``synthesize`` -> ``compress`` -> ``teacher_targets`` + ``feature_regression_``
-> ``output_discrepancy``. Usable on its own from Python; knows nothing of Optuna or databases. Beside the method:
``frandi_core.models`` (small reference architectures) and ``frandi_core.data`` (labeled data and accuracy, to
train them and to check the method, which never needs labels).
"""

from __future__ import annotations

from ._actquant import (
    CALIBRATIONS,
    ActQuantizer,
    activation_quantizers,
    activation_settings,
    fake_quantize_act,
    quantize_activations_,
    remove_activation_quantizers_,
    set_activation_quantizers_,
)
from ._bops import bops, layer_macs
from ._channels import (
    ChannelPlan,
    channel_groups,
    channel_importance,
    channel_plan,
    prune_channels_,
    pruned_channels,
)
from ._compress import WEIGHT_CLIPS, Compressor, clip_ratios, compress, fake_quantize, magnitude_mask, quantize, strip_
from ._errors import DataError, FrandiError, MissingDependency
from ._files import write_atomic
from ._hooks import capture
from ._intpoints import ROUNDING_RULE, integer_layers, point_settings, set_integer_points
from ._latency import LATENCY_RULE, LatencyTable, latency_target, measure_latency
from ._losses import batch_stats, bn_kl, feature_loss, normalized_distance, od_from_outputs, total_variation
from ._model import ModelSpec, build_architecture, check_input_shape, load_model, read_state_dict, weights_digest
from ._onnx import LAYOUTS, run_onnx, to_onnx
from ._onnx_check import OnnxParity, onnx_parity
from ._onnx_fast import onnx_fusion
from ._pack import Packed, load_packed, pack, pack_bits, packed, save_packed, unpack, unpack_bits
from ._policy import LayerInfo, LayerSetting, Policy, compressible_layers
from ._proxies import disagreement, feature_discrepancy, softmax_kl
from ._recover import (
    OUTPUT,
    NonFiniteError,
    RecoveryConfig,
    TeacherTargets,
    default_feature_layers,
    feature_regression_,
    model_outputs,
    output_discrepancy,
    recalibrate_,
    teacher_targets,
)
from ._size import ACT_SIZE_RULE, SIZE_RULE, SizeReport, WeightLayout, model_size, weight_layout
from ._synth import SynthConfig, SyntheticData, bn_kl_loss, bn_names, input_bounds, invert, synthesize

__all__ = [
    # eq. 1, synthetic data from BN statistics
    "SynthConfig",
    "SyntheticData",
    "synthesize",
    "invert",
    "input_bounds",
    "bn_kl",
    "bn_kl_loss",
    "batch_stats",
    "bn_names",
    "total_variation",
    # the user's model
    "ModelSpec",
    "load_model",
    "build_architecture",
    "read_state_dict",
    "weights_digest",
    "check_input_shape",
    # compression: policies, weights, activations, integer points
    "Policy",
    "LayerSetting",
    "LayerInfo",
    "compressible_layers",
    "compress",
    "Compressor",
    "strip_",
    "magnitude_mask",
    "quantize",
    "fake_quantize",
    "WEIGHT_CLIPS",
    "clip_ratios",
    "CALIBRATIONS",
    "ActQuantizer",
    "activation_quantizers",
    "activation_settings",
    "fake_quantize_act",
    "quantize_activations_",
    "set_activation_quantizers_",
    "remove_activation_quantizers_",
    "ROUNDING_RULE",
    "integer_layers",
    "point_settings",
    "set_integer_points",
    "ChannelPlan",
    "channel_groups",
    "channel_importance",
    "channel_plan",
    "prune_channels_",
    "pruned_channels",
    # eq. 2, recovery by Feature Regression
    "RecoveryConfig",
    "TeacherTargets",
    "teacher_targets",
    "default_feature_layers",
    "feature_loss",
    "feature_regression_",
    "NonFiniteError",
    "capture",
    "recalibrate_",
    # eq. 3, scoring: Output Discrepancy, other label-free proxies, cost (size, BOPs, latency)
    "OUTPUT",
    "od_from_outputs",
    "output_discrepancy",
    "model_outputs",
    "normalized_distance",
    "disagreement",
    "feature_discrepancy",
    "softmax_kl",
    "SIZE_RULE",
    "ACT_SIZE_RULE",
    "SizeReport",
    "model_size",
    "WeightLayout",
    "weight_layout",
    "bops",
    "layer_macs",
    "LATENCY_RULE",
    "LatencyTable",
    "latency_target",
    "measure_latency",
    # files: packed weights, ONNX, atomic writes
    "Packed",
    "pack",
    "packed",
    "save_packed",
    "load_packed",
    "unpack",
    "pack_bits",
    "unpack_bits",
    "LAYOUTS",
    "to_onnx",
    "run_onnx",
    "onnx_fusion",
    "OnnxParity",
    "onnx_parity",
    "write_atomic",
    # errors
    "FrandiError",
    "DataError",
    "MissingDependency",
]
