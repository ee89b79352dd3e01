"""The sensitivity table shown to people (frandi sensitivity): as text, and as a heatmap PNG."""

from __future__ import annotations

from frandi_core import LayerSetting

from ._sensitivity import Sensitivity


def _label(s: LayerSetting) -> str:
    return f"{s.sparsity:.2f}/{'fp32' if s.bits is None else s.bits}"


def _columns(table: Sensitivity) -> tuple[list[str], list[tuple[float, ...]]]:
    """Column labels (sparsity/bits, then a<bits> for the activation widths) and each layer's row."""
    labels = [_label(s) for s in table.settings] + [f"a{b}" for b in table.act_bits]
    rows = [r + (table.act_od[i] if table.act_bits else ()) for i, r in enumerate(table.od)]
    return labels, rows


def format_table(table: Sensitivity) -> str:
    """The table as text: one row per layer, one column per setting (sparsity/bits; a<bits>: input quantized)."""
    width = max(len(n) for n in table.layers)
    labels, od = _columns(table)
    head = " " * width + "".join(f"{label:>10}" for label in labels)
    rows = [f"{n:<{width}}" + "".join(f"{v:>10.4f}" for v in r) for n, r in zip(table.layers, od, strict=True)]
    return "\n".join([head, *rows])


def heatmap(table: Sensitivity, path: str) -> None:
    """Save the table as a heatmap PNG: layers down, settings across, OD in color (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    labels, rows = _columns(table)
    od = [[max(v, 1e-5) for v in r] for r in rows]
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(labels), 1.2 + 0.32 * len(table.layers)))
    norm = LogNorm(vmin=min(min(r) for r in od), vmax=max(max(r) for r in od))
    image = ax.imshow(od, aspect="auto", cmap="magma_r", norm=norm)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(table.layers)), list(table.layers), fontsize=8)
    ax.set_xlabel("setting compressing only that layer (sparsity / weight bits; a<bits>: its input quantized)")
    ax.set_title(f"held-out OD per layer and setting ({table.seconds:.1f} s to measure)", fontsize=9)
    fig.colorbar(image, ax=ax, label="OD (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
