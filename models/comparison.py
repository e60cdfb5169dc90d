"""What the two benchmark pipelines (``tools/char_lm_pipeline.py``, ``tools/minilm_pipeline.py``) share: the
models a pipeline wrote, the peers' rules at a MAC budget, the side-by-side timing, the table, the frontier
and the trade-off figure.

Rules:
- Every model a stage writes is an ``Entry`` of the work folder's ``models.json`` (``Manifest``): its file,
  the figure's series (``method``), its budget, fine-tuning steps, quantization scheme, MatMul MACs of one
  sequence (a quantized model counts its float source's) and its scores. The ``bench`` stage times every entry
  whose file is there, so the speed figures can be measured again alone.
- Budgets are weight MACs per token: the multiply-accumulates of the model's ``nn.Linear`` layers. Ours' budget
  is the dense count less what every annealed plan saves (``budget_after``); a peer meets it with the largest
  model not above it.
- Low rank, both kinds (``uniform_ranks``): every chosen layer at one share of its MACs, the largest share
  whose ranks keep the weight MACs within the budget. Whitened (``whitened_low_rank``, SVD-LLM): each weight
  replaced by the activation-whitened truncated SVD at its rank, on the dense model's calibration
  activations (the plain cut of annealing's low-rank family, ``Refitter.low_rank``); plain: the weight's own
  truncated SVD (``onnx_decomp.torch.factorize``).
- Structured pruning (``pruned_widths``): whole heads and FFN units alike in every block, the head count
  nearest the budget's share of the block weights, then the FFN width that brings the weight MACs within it.
- Speed (``bench``): ``bench_models``, one intra-op thread, that thread's CPU time, interleaved rounds; a
  ratio is the median over rounds of one model's time over another's in the same round.
- Frontier (``uncovered``): a peer's point is covered when one of ours is at least as fast and at least as
  good; the uncovered points are where ours loses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from torch import nn

from onnx_decomp.config import SessionConfig
from onnx_decomp.context import ModelContext
from onnx_decomp.cost.model_stats import counted_shapes, node_macs
from onnx_decomp.drivers.bench import bench_models
from onnx_decomp.io.shapes import InputShapes, InputSpec
from onnx_decomp.search.network import Network
from onnx_decomp.search.refit import Refitter
from onnx_decomp.torch import AppliedStructure, apply_structure, bind_initializers
from onnx_decomp.torch.binding import float_initializers
from onnx_decomp_passes import LowRankPlan, Plan

PEERS = ("whitened low rank", "plain SVD", "pruned")
MAC_OPS = ("MatMul", "Gemm", "MatMulInteger", "MatMulNBits")
OURS = "ours"


@dataclass
class Entry:
    """One model of the table (module rules); ``path`` is relative to the work folder."""

    name: str
    method: str
    budget: str
    path: str
    steps: int = 0
    quantized: str = ""
    macs: int = 0
    scores: dict = field(default_factory=dict)

    @property
    def series(self) -> str:
        """The figure's series: method, fine-tuning and quantization."""
        return self.method + (f" +{self.steps} steps" if self.steps else "") + (" +int8" if self.quantized else "")


class Manifest:
    """``work/models.json``: name -> ``Entry``, in the order the stages wrote them."""

    def __init__(self, work: Path):
        self.work, self.path = work, work / "models.json"

    def entries(self) -> dict[str, Entry]:
        if not self.path.exists():
            return {}
        return {e["name"]: Entry(**e) for e in json.loads(self.path.read_text())}

    def add(self, entry: Entry) -> None:
        entries = self.entries()
        entries[entry.name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps([asdict(e) for e in entries.values()], indent=1) + "\n")

    def written(self) -> dict[str, Entry]:
        """The entries whose model file is there."""
        return {name: e for name, e in self.entries().items() if (self.work / e.path).exists()}


def weight_macs(model: nn.Module) -> int:
    """Multiply-accumulates per token of the model's Linear layers."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def matmul_macs(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> int:
    """Multiply-accumulates of the model's matrix products on ``feeds`` (float or quantized: ``MAC_OPS``), every
    shape as ONNX Runtime gives it."""
    specs = [InputSpec(name, array.dtype, array.shape) for name, array in feeds.items()]
    shapes = counted_shapes(model, specs, feeds, every_tensor=True)
    return sum(node_macs(node, shapes) for node in model.graph.node if node.op_type in MAC_OPS)


def budget_after(plans: Mapping[object, Plan], dense: int) -> int:
    """Weight MACs per token once every plan is in force (module rule)."""
    return dense - sum(plan.dense_macs - plan.macs for plan in plans.values())


def uniform_ranks(shapes: Mapping[str, tuple[int, int]], budget: float) -> dict[str, int]:
    """Rank per layer (``shapes``: name -> ``(n_out, n_in)``) at one share of every layer's MACs, the largest
    share whose factorised layers cost at most ``budget`` together (module rule; at least rank 1)."""
    def ranks(share: float) -> dict[str, int]:
        return {name: int(max(1, min(min(o, i), share * o * i // (o + i)))) for name, (o, i) in shapes.items()}

    def cost(chosen: dict[str, int]) -> int:
        return sum(r * sum(shapes[name]) for name, r in chosen.items())

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if cost(ranks(middle)) <= budget else (low, middle)
    return ranks(low)


def ranks_within(model: nn.Module, layers: Mapping[str, tuple[int, int]], budget: float) -> dict[str, int]:
    """``uniform_ranks`` of ``layers`` (module path -> ``(out, in)``) keeping ``model``'s weight MACs within
    ``budget``."""
    return uniform_ranks(layers, budget - weight_macs(model) + sum(o * i for o, i in layers.values()))


def pruned_widths(d_model: int, heads: int, head_dim: int, width: int, layers: int, budget: float) -> tuple[int, int]:
    """Heads and FFN units kept per block so that the blocks' weight MACs (q, k, v, o and the two FFN layers,
    ``layers`` blocks) stay within ``budget`` (module rule)."""
    full = layers * (4 * d_model * heads * head_dim + 2 * d_model * width)
    kept_heads = int(min(heads, max(1, round(budget / full * heads))))
    attention = 4 * d_model * head_dim * kept_heads
    kept_units = int(min(width, max(1, (budget / layers - attention) // (2 * d_model))))
    return kept_heads, kept_units


def whitened_low_rank(model: nn.Module, onnx_model: onnx.ModelProto, ranks: Mapping[str, int],
                      batches: Sequence[dict], input_shapes: InputShapes = None) -> AppliedStructure:
    """Every Linear named in ``ranks`` (module path -> rank) replaced in place by the activation-whitened
    truncated SVD of its weight (module rule), from ``onnx_model``'s activations on ``batches``; ``onnx_model``
    is exported from ``model``'s current weights."""
    values = {name: p.detach().numpy() for name, p in model.named_parameters()}
    bindings = bind_initializers(float_initializers(onnx_model), values)
    wanted = {group[0].parameter.removesuffix(".weight"): name for name, group in bindings.items()}
    missing = sorted(set(ranks) - set(wanted))
    if missing:
        raise ValueError(f"no weight of the ONNX model holds {missing}")
    rank_of = {wanted[path]: rank for path, rank in ranks.items()}
    network = Network(ModelContext.load(onnx_model, input_shapes))
    layers = [layer for layer in network.layers if layer.weight in rank_of]
    taps = network.run(batches, taps=True).taps
    refitter = Refitter()
    weights = {l.site: refitter.low_rank(l, rank_of[l.weight], taps[l.site], taps[l.site]) for l in layers}
    plans = {l.site: LowRankPlan(*l.shape, rank_of[l.weight]) for l in layers}
    return apply_structure(model, plans, network.model_with(weights), onnx_model=onnx_model)


def bench(work: Path, dense: str, batches: Sequence[int], inputs: Mapping[str, np.ndarray], budget_s: float) -> dict:
    """Every written entry timed side by side against ``dense`` (module rule); writes and returns
    ``work/bench.json``."""
    entries = Manifest(work).written()
    names = [dense, *(name for name in entries if name != dense)]
    models = {name: onnx.load(str(work / entries[name].path)) for name in names}
    report = bench_models(models, batches, SessionConfig("cpu", threads=1), budget_s=budget_s, clock="cpu",
                          inputs=inputs)
    report.write_json(work / "bench.json")
    return report.to_dict()


def round_times(bench_json: dict) -> dict[tuple[str, int], np.ndarray]:
    """``(model, batch)`` -> its time in each round (ms), rounds aligned across models."""
    return {(r["model"], r["batch"]): np.array(r["samples_ms"]) for r in bench_json["results"]}


def ratio(times: Mapping[tuple[str, int], np.ndarray], batch: int, reference: str, name: str) -> float:
    """How many times faster ``name`` ran than ``reference`` (module rule)."""
    return float(np.median(times[reference, batch] / times[name, batch]))


@dataclass(frozen=True)
class Point:
    name: str
    speed: float
    quality: float


def uncovered(peers: Sequence[Point], ours: Sequence[Point]) -> list[tuple[Point, Optional[Point]]]:
    """Each peer point no point of ours covers (module rule), with ours' best point at least as fast (None:
    none is)."""
    losses = []
    for peer in peers:
        if any(o.speed >= peer.speed and o.quality >= peer.quality for o in ours):
            continue
        faster = [o for o in ours if o.speed >= peer.speed]
        losses.append((peer, max(faster, key=lambda o: o.quality) if faster else None))
    return losses


def markdown(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; the first row is the header."""
    lines = ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join([lines[0], "|" + "---|" * len(rows[0]), *lines[1:]])


COLOURS = {OURS: "#c44e52", PEERS[0]: "#4c72b0", PEERS[1]: "#55a868", PEERS[2]: "#8172b2"}


def tradeoff_figure(entries: Sequence[Entry], speeds: Mapping[tuple[str, int], float], batches: Sequence[int],
                    quality: str, label: str, path: Path, title: str) -> None:
    """Quality (``scores[quality]``, axis ``label``) against speed over dense, one column per batch size, post-
    training above and fine-tuned below; ours and each peer a colour, one line over its budgets, +int8 dashed;
    the dense model and its quantized forms (and below, its fine-tuned control) as black markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, grid = plt.subplots(2, len(batches), figsize=(6.5 * len(batches), 10), squeeze=False)
    dense = next(e for e in entries if e.name == "dense").scores[quality]
    for column, batch in enumerate(batches):
        for row, trained in enumerate((False, True)):
            axes = grid[row][column]
            series: dict[str, list] = {}
            for e in entries:
                point = (speeds[e.name, batch], e.scores[quality])
                if e.method in COLOURS and bool(e.steps) == trained:
                    series.setdefault(e.series, []).append((-e.macs, *point, e.budget))
                elif e.method not in COLOURS and (not e.steps or trained):
                    axes.plot(*point, "ko" if not e.quantized else "k^", ms=5)
                    axes.annotate(e.name, point, textcoords="offset points", xytext=(4, -10), fontsize=7)
            for name, points in series.items():
                method = next(m for m in COLOURS if name.startswith(m))
                points.sort()
                axes.plot([p[1] for p in points], [p[2] for p in points], marker="o", color=COLOURS[method],
                          linestyle="--" if name.endswith("int8") else "-", label=name)
                for _, speed, value, budget in points:
                    axes.annotate(budget, (speed, value), textcoords="offset points", xytext=(3, 3), fontsize=6)
            axes.axhline(dense, color="grey", linestyle="--", linewidth=1)
            axes.axvline(1.0, color="grey", linestyle=":", linewidth=1)
            axes.set(xlabel="speed over dense fp32 (one thread)", ylabel=label,
                     title=f"{title}: {'+ fine-tuning' if trained else 'post-training'}, batch {batch}")
            axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, format="png")
    plt.close(figure)
