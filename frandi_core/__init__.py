"""FRanDI, the method: synthetic data from BN statistics, compression, Feature Regression, Output Discrepancy.

The paper's equations (FRanDI: Sobolev, Ermilov, Kozyrskiy, Phan), one short function each:

- eq. 1, KL of a BN layer's batch statistics against its running ones: ``bn_kl``; summed over a model's BN
  layers by ``bn_kl_loss``; ``synthesize`` makes the synthetic batches by minimizing it over the inputs.
- eq. 2, the Feature Regression loss (student features against the teacher's, each L2-normalized):
  ``feature_loss``; ``feature_regression_`` minimizes it over a compressed student's weights.
- eq. 3, Output Discrepancy (normalized outputs, the label-free score): ``od_from_outputs``; of a model on the
  held-out batch: ``output_discrepancy``.

A whole policy in a few lines: ``synthesize`` -> ``compress`` -> ``teacher_targets`` + ``feature_regression_``
-> ``output_discrepancy``. Usable on its own from Python; knows nothing of Optuna or databases.
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
from ._compress import Compressor, compress, fake_quantize, magnitude_mask, quantize, strip_
from ._errors import FrandiError
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
    teacher_targets,
)
from ._size import ACT_SIZE_RULE, SIZE_RULE, SizeReport, WeightLayout, model_size, weight_layout
from ._synth import SynthConfig, SyntheticData, bn_kl_loss, bn_names, invert, synthesize

__all__ = [
    "ACT_SIZE_RULE",
    "LATENCY_RULE",
    "LAYOUTS",
    "LatencyTable",
    "ROUNDING_RULE",
    "SIZE_RULE",
    "CALIBRATIONS",
    "ChannelPlan",
    "OUTPUT",
    "ActQuantizer",
    "Compressor",
    "FrandiError",
    "LayerInfo",
    "LayerSetting",
    "ModelSpec",
    "NonFiniteError",
    "OnnxParity",
    "Packed",
    "Policy",
    "RecoveryConfig",
    "SizeReport",
    "SynthConfig",
    "SyntheticData",
    "TeacherTargets",
    "activation_quantizers",
    "activation_settings",
    "WeightLayout",
    "batch_stats",
    "bn_kl",
    "bn_kl_loss",
    "bn_names",
    "bops",
    "build_architecture",
    "capture",
    "channel_groups",
    "channel_importance",
    "channel_plan",
    "check_input_shape",
    "compress",
    "compressible_layers",
    "default_feature_layers",
    "disagreement",
    "fake_quantize",
    "fake_quantize_act",
    "feature_discrepancy",
    "feature_loss",
    "feature_regression_",
    "integer_layers",
    "invert",
    "latency_target",
    "layer_macs",
    "load_model",
    "load_packed",
    "magnitude_mask",
    "measure_latency",
    "model_outputs",
    "model_size",
    "normalized_distance",
    "onnx_fusion",
    "onnx_parity",
    "od_from_outputs",
    "output_discrepancy",
    "pack",
    "pack_bits",
    "packed",
    "point_settings",
    "prune_channels_",
    "pruned_channels",
    "quantize",
    "quantize_activations_",
    "read_state_dict",
    "remove_activation_quantizers_",
    "run_onnx",
    "save_packed",
    "set_activation_quantizers_",
    "set_integer_points",
    "softmax_kl",
    "strip_",
    "synthesize",
    "teacher_targets",
    "to_onnx",
    "total_variation",
    "unpack",
    "unpack_bits",
    "weight_layout",
    "weights_digest",
    "write_atomic",
]
