"""The fast ONNX layout keeps the accuracy the trial measured: uniform W8A8, W4A8, W4A4 (first and last layers
W8A8), each compressed and recovered exactly as a trial is (integer points and bias rounding included), then real
test accuracy of the student in PyTorch and of its `frandi export --format onnx` file in onnxruntime, how many
layers onnxruntime runs on integer kernels, and the export's parity check.

python -m studies.experiments.fast_onnx                       # the Fashion-MNIST ResNet and separable net
python -m studies.experiments.fast_onnx --quick               # digits, a smoke test
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frandi_core import Policy, integer_layers, onnx_fusion, onnx_parity, run_onnx, to_onnx

from ._common import Bench, Report, each_model, parse, parser

SETTINGS = ((8, 8), (4, 8), (4, 4))  # (weight bits, activation bits)


def uniform(b: Bench, w: int, a: int) -> Policy:
    """W``w``A``a`` on every layer, the first and last at W8A8."""
    names = [n for n, _ in b.uniform().layers]
    edge = {names[0], names[-1]}
    return Policy.from_dict({n: {"bits": 8 if n in edge else w, "act_bits": 8 if n in edge else a} for n in names})


def evaluate(b: Bench, w: int, a: int) -> dict[str, Any]:
    """One setting: recovered as a trial is, then accuracy in both runtimes, fusion and parity."""
    policy = uniform(b, w, a)
    student, result = b.recovered(policy)
    data = to_onnx(student, policy, b.runner.heldout)
    parity = onnx_parity(student, data, b.runner.heldout)
    fusion = onnx_fusion(data)
    x, y = b.test.tensors
    onnx_acc = 100.0 * float((run_onnx(data, x).argmax(1) == y).float().mean())
    torch_acc = b.accuracy(student)
    return {
        "model": b.name, "policy": f"W{w}A{a}", "original": round(b.original, 2), "od": round(result.od, 4),
        "pytorch": round(torch_acc, 2), "onnxruntime": round(onnx_acc, 2),
        "drop": round(b.original - onnx_acc, 2),
        "integer_layers": f"{fusion['integer']} of {fusion['total']} ({len(integer_layers(student))} capable)",
        "parity_error": f"{parity.error:.2g}", "tie_flips": f"{parity.flipped}/{parity.samples}",
        "mismatched": parity.mismatched, "onnx_kib": round(len(data) / 1024, 1),
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(parser(__doc__), argv)
    settings = ((8, 8), (4, 4)) if args.quick else SETTINGS

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        report.setup(b)
        rows = [evaluate(b, w, a) for w, a in settings]
        report.add_results(rows)
        return rows

    return each_model(args, "fast_onnx", "Fast ONNX layout: accuracy in onnxruntime against the student ({name})",
                      model)


if __name__ == "__main__":
    main()
