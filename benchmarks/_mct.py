"""The peer side of bench_peers: Sony's Model Compression Toolkit (PyPI ``model-compression-toolkit``, PyTorch API).

One wall around MCT: its data generation from BatchNorm statistics, post-training quantization (PTQ), gradient PTQ
(GPTQ) and weight mixed precision, each on a copy of the model, with a target platform (TPC) built from MCT's own
IMX500 v1.0 one: weights symmetric per output channel at ``w`` bits, activations *uniform* (non-power-of-two,
min/max) at ``a`` bits on every operator set and on the default one, so the network input is quantized at ``a`` bits
too. MCT is imported only here, and only when a function runs: the rest of the repository never needs it.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MCT_VERSION = "2.6.1"
INSTALL = (
    "python3.11 -m venv .venv-peers && .venv-peers/bin/pip install -c benchmarks/constraints-peers.txt -e '.[peers]' "
    "&& .venv-peers/bin/python -m benchmarks.bench_peers"
)
BATCH = 32  # images per representative batch (MCT's data-generation default batch too)


def missing() -> str | None:
    """None when MCT can be imported; else the one line saying how to install it."""
    if importlib.util.find_spec("model_compression_toolkit") is None:
        return (f"bench_peers: Model Compression Toolkit is not installed (skipped); its pins clash with "
                f"constraints.txt, so it gets its own venv: {INSTALL}")
    return None


class FirstChannel(nn.Module):
    """MCT's data generation makes 3-channel images whatever the model takes; this feeds the model channel 0."""

    def __init__(self, model: nn.Module, channels: int) -> None:
        super().__init__()
        self.model = model
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, : self.channels])


@dataclass(frozen=True)
class Generated:
    """MCT's synthetic images (shaped as the model's input) and what they cost."""

    images: torch.Tensor
    iterations: int
    seconds: float


def generate(model: nn.Module, shape: tuple[int, ...], images: int, iterations: int,
             normalization: tuple[float, float] | None = None) -> Generated:
    """MCT's data generation (BN-statistics alignment, its defaults otherwise) of ``images`` inputs of ``shape``.

    MCT keeps its images within the pixel range [0, 255] after a normalization, torchvision's ImageNet one by
    default; ``normalization`` (mean, std of pixels in [0, 1]) is the data's own instead, for every channel."""
    import model_compression_toolkit as mct
    from model_compression_toolkit.data_generation.common.enums import ImageNormalizationType
    from model_compression_toolkit.data_generation.common.image_pipeline import image_normalization_dict

    t0 = time.perf_counter()
    cfg = mct.data_generation.get_pytorch_data_generation_config(n_iter=iterations, data_gen_batch_size=BATCH)
    wrapped = FirstChannel(copy.deepcopy(model).eval(), shape[0]) if shape[0] < 3 else copy.deepcopy(model).eval()
    key, default = ImageNormalizationType.TORCHVISION, image_normalization_dict[ImageNormalizationType.TORCHVISION]
    if normalization is not None:  # MCT takes only its named normalizations: the default one's values, for this run
        mean, std = normalization
        image_normalization_dict[key] = [[mean * 255] * 3, [std * 255] * 3]
    try:
        out = mct.data_generation.pytorch_data_generation_experimental(wrapped, images, tuple(shape[1:]), cfg)
    finally:
        image_normalization_dict[key] = default
    x = torch.cat([t.detach().cpu() for t in out])[:, : shape[0]].contiguous()
    return Generated(x, iterations, time.perf_counter() - t0)


def tpc(w: int | tuple[int, ...], a: int) -> Any:
    """MCT's IMX500 v1.0 TPC with kernels at ``w`` bits (a tuple: the mixed-precision candidates, largest first) and
    every activation, the default operator set's (the network input) included, uniform at ``a`` bits."""
    from mct_quantizers import QuantizationMethod
    from model_compression_toolkit.target_platform_capabilities.constants import KERNEL_ATTR, WEIGHTS_N_BITS
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import tpc as imx

    base, _, default = imx.get_op_quantization_configs()
    act = {"activation_n_bits": a, "supported_input_activation_n_bits": (a,),
           "activation_quantization_method": QuantizationMethod.UNIFORM}
    widths = (w,) if isinstance(w, int) else w
    options = [base.clone_and_edit(attr_to_edit={KERNEL_ATTR: {WEIGHTS_N_BITS: b}}, **act) for b in widths]
    return imx.generate_tpc(default_config=default.clone_and_edit(**act), base_config=options[0],
                            mixed_precision_cfg_list=options, name=f"w{'-'.join(map(str, widths))}a{a}")


def _batches(x: torch.Tensor) -> Callable[[], Iterator[list[torch.Tensor]]]:
    def gen() -> Iterator[list[torch.Tensor]]:
        for i in range(0, len(x), BATCH):
            yield [x[i : i + BATCH]]

    return gen


def _quiet() -> None:
    import logging

    logging.getLogger("Model Compression Toolkit").setLevel(logging.ERROR)


def ptq(model: nn.Module, data: torch.Tensor, w: int, a: int) -> nn.Module:
    """MCT PTQ of a copy of ``model`` at W``w``A``a`` (every layer), statistics from ``data``."""
    import model_compression_toolkit as mct

    _quiet()
    q, _ = mct.ptq.pytorch_post_training_quantization(copy.deepcopy(model).eval(), _batches(data),
                                                      target_platform_capabilities=tpc(w, a))
    return q.eval()


def gptq(model: nn.Module, data: torch.Tensor, w: int, a: int, epochs: int) -> nn.Module:
    """MCT GPTQ (its default config: learned rounding, Hessian-weighted loss) for ``epochs`` over ``data``."""
    import model_compression_toolkit as mct

    _quiet()
    q, _ = mct.gptq.pytorch_gradient_post_training_quantization(
        copy.deepcopy(model).eval(), _batches(data), gptq_config=mct.gptq.get_pytorch_gptq_config(n_epochs=epochs),
        target_platform_capabilities=tpc(w, a))
    return q.eval()


def mixed(model: nn.Module, data: torch.Tensor, weight_bytes: float, a: int = 8,
          bits: tuple[int, ...] = (8, 4, 2)) -> nn.Module:
    """MCT weight mixed precision (kernels at one of ``bits`` per layer) within ``weight_bytes``, activations at
    ``a`` bits uniform."""
    import model_compression_toolkit as mct

    _quiet()
    ru = mct.core.ResourceUtilization(weights_memory=weight_bytes)
    q, _ = mct.ptq.pytorch_post_training_quantization(copy.deepcopy(model).eval(), _batches(data),
                                                      target_resource_utilization=ru,
                                                      target_platform_capabilities=tpc(bits, a))
    return q.eval()


def quantizers(q: nn.Module) -> dict[str, Any]:
    """What the quantized model holds, for the record: the network input's quantizer bits (``input``; None: not
    quantized), each activation quantizer's bits and each kernel's bits, by MCT's node name."""
    acts, weights, inputs = {}, {}, set()
    for name, m in q.named_modules():
        held: Any = m  # MCT's modules: their attributes are MCT's
        if type(m).__name__ == "DummyPlaceHolder":  # an input node, named after the forward's argument
            inputs.add(name)
        elif type(m).__name__ == "PytorchActivationQuantizationHolder":
            acts[name.removesuffix("_activation_holder_quantizer")] = int(held.activation_holder_quantizer.num_bits)
        elif type(m).__name__ == "PytorchQuantizationWrapper":
            for attr, wq in held.weights_quantizers.items():
                weights[f"{name}.{attr}"] = int(wq.num_bits)
    found = [acts[n] for n in inputs if n in acts]
    return {"input": found[0] if found else None, "activations": acts, "weights": weights}


def kernel_bytes(q: nn.Module) -> float:
    """The quantized kernels' bytes at their bits (what MCT's ``weights_memory`` budget counts)."""
    total = 0.0
    for m in q.modules():
        held: Any = m
        if type(m).__name__ == "PytorchQuantizationWrapper":
            for attr, wq in held.weights_quantizers.items():
                total += getattr(held.layer, attr).numel() * int(wq.num_bits) / 8
    return total
