"""PNG figures a person can open: weights against their null, the confirmed support in block order, and
an annealing run's fidelity against MAC reduction.

Needs matplotlib (extra ``figures``); imported here only, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence, Union

import numpy as np

from onnx_decomp.decisions import Step, Verdict
from onnx_decomp.errors import DecompError
from onnx_decomp_passes import BlockPlan

PathLike = Union[str, os.PathLike]
MAX_PIXELS = 1024  # the support image is max-pooled down to this many rows/columns


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DecompError("figures need matplotlib: pip install 'onnx-decomp[figures]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weight_histogram(w: np.ndarray, null, title: str, path: PathLike) -> None:
    """Density histogram of the weight entries with the null density drawn over it."""
    plt = _pyplot()
    values = np.asarray(w, dtype=np.float64).ravel()
    span = float(np.abs(values).max(initial=1e-12))
    grid = np.linspace(-span, span, 801)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.hist(values, bins=120, range=(-span, span), density=True, color="#4c72b0", alpha=0.75,
              label="trained weights")
    axes.plot(grid, null.pdf(grid), color="#dd8452", linewidth=2, label="null (initialization)")
    axes.set(title=title, xlabel="weight value", ylabel="density")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_permuted_support(support: np.ndarray, plan: BlockPlan, title: str, path: PathLike,
                          features: str = "") -> None:
    """The support ``[n_out, n_in]`` with rows in branch order and columns in first-reading-branch order,
    so independent blocks show on the diagonal (max-pooled to at most MAX_PIXELS per side); ``features``
    names what rows and columns are (``channels``: output and input channels)."""
    plt = _pyplot()
    cols = list(dict.fromkeys(np.concatenate([b.cols for b in plan.branches] + [plan.unused_cols]).tolist()))
    image = np.asarray(support, dtype=bool)[plan.output_order()][:, cols]
    for axis in (0, 1):
        factor = -(-image.shape[axis] // MAX_PIXELS)
        if factor > 1:
            pad = [(0, 0), (0, 0)]
            pad[axis] = (0, (-image.shape[axis]) % factor)
            image = np.pad(image, pad)
            shape = list(image.shape)
            shape[axis:axis + 1] = [shape[axis] // factor, factor]
            image = image.reshape(shape).any(axis=axis + 1)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.imshow(image, cmap="Greys", interpolation="nearest", aspect="auto")
    prefix = f"{features} " if features else ""
    axes.set(xlabel=f"input {prefix}(permuted)", ylabel=f"output {prefix}(permuted)")
    axes.set_title(title, fontsize=9)  # long weight names fit the narrow square figure
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_anneal_path(steps: Sequence[Step], dense_macs: int, metric: str, tolerance: float, title: str,
                     path: PathLike) -> None:
    """Fidelity against MAC reduction: every candidate tried (marked by verdict), the path of accepted
    steps from the dense model, and the tolerance line."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    styles = {Verdict.DEFERRED: ("#8c8c8c", "o", "deferred"), Verdict.ROLLED_BACK: ("#c44e52", "x", "rolled back"),
              Verdict.ACCEPTED: ("#55a868", "o", "accepted")}
    for verdict, (color, marker, label) in styles.items():
        chosen = [s for s in steps if s.verdict is verdict]
        axes.scatter([dense_macs / max(s.candidate.macs, 1) for s in chosen],
                     [max(s.candidate.fidelity, 0.0) for s in chosen], c=color, marker=marker, label=label, zorder=3)
    path_x = [1.0] + [dense_macs / max(s.candidate.macs, 1) for s in steps if s.verdict is Verdict.ACCEPTED]
    path_y = [0.0] + [max(s.candidate.fidelity, 0.0) for s in steps if s.verdict is Verdict.ACCEPTED]
    axes.plot(path_x, path_y, color="#55a868", linewidth=1.5, zorder=2, label="accepted path")
    axes.axhline(tolerance, color="#dd8452", linestyle="--", label=f"tolerance {tolerance:g}")
    axes.set_xscale("log", base=2)
    axes.set(title=title, xlabel="MatMul MAC reduction (dense / annealed)", ylabel=f"{metric} on tuning data")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_speedup_against_flops(results, path: PathLike, subtitle: str) -> None:
    """Speedup over dense against FLOP reduction, one series per model, batch sizes annotated, with the
    line y = x (speedup equal to the FLOP reduction); results without a finite reduction are left out."""
    results = [r for r in results if np.isfinite(r.flop_reduction)]
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 5))
    top = max([1.0] + [max(r.speedup, r.flop_reduction) for r in results]) * 1.2
    axes.plot([0.5, top], [0.5, top], color="grey", linestyle="--", label="speedup = FLOP reduction")
    for model in dict.fromkeys(r.model for r in results):
        points = [r for r in results if r.model == model]
        axes.scatter([r.flop_reduction for r in points], [r.speedup for r in points], label=model, s=40)
        for r in points:
            axes.annotate(f"b={r.batch}", (r.flop_reduction, r.speedup), textcoords="offset points",
                          xytext=(4, 4), fontsize=8)
    axes.set(xscale="log", yscale="log", xlim=(0.5, top), ylim=(0.5, top), xlabel="FLOP reduction (dense / model)",
             ylabel="speedup (dense time / model time)", title=f"onnx-decomp bench ({subtitle})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def plot_tradeoff(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float, str]]]], reference: float,
                  path: PathLike, ylabel: str, title: str) -> None:
    """One panel per key of ``panels`` (e.g. a batch size): per method a curve of ``(speedup, value, label)``
    points over its budgets (sorted by speedup, each point labelled), a horizontal
    line at the dense model's ``reference`` value and a vertical one at speedup 1."""
    plt = _pyplot()
    figure, grid = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for axes, (panel, series) in zip(grid[0], panels.items()):
        axes.axhline(reference, color="grey", linestyle="--", linewidth=1, label="dense")
        axes.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        for method, points in series.items():
            points = sorted(points)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
            for speed, value, label in points:
                if label:
                    axes.annotate(label, (speed, value), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axes.set(xlabel="speedup over dense (ONNX Runtime)", ylabel=ylabel, title=f"{title}, {panel}")
        axes.xaxis.set_major_formatter(lambda speed, _: f"{speed:g}x")
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
