"""Where a plan's support comes from: a strategy per ``--support``.

- ``ExactSupport``: each weight's nonzero pattern. Lossless; validated per element (``Tolerance()``).
- ``ConfirmedSupport``: the entries the statistical analysis confirms (``stats.analyze``); entries outside
  are dropped, so the step is lossy and validated by relative L2 per output
  (``DEFAULT_LOSSY_TOLERANCE`` unless a ``rel_l2`` tolerance is given).
- ``AnnealedSupport``: explicit plans per site, as annealing (``search``) found them for a model whose
  weights are already masked and refitted to them (zeros outside), so the rewrite is exact; plans may read
  overlapping columns (block-triangular), which the nonzero pattern's components would merge. Other
  weights keep their nonzero pattern.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import numpy as np

from onnx_decomp.config import AnalysisConfig, Tolerance
from onnx_decomp.context import ModelContext
from onnx_decomp.errors import UnsupportedConstructError
from onnx_decomp.stats.analyze import analyze_context
from onnx_decomp_passes import Plan, Site, plan_from_support

DEFAULT_LOSSY_TOLERANCE = 0.05  # relative L2 per output, when the support drops nonzero weights
SUPPORTS = ("exact", "confirmed")
SupportOrPlan = Union[np.ndarray, Plan]  # a Boolean support, or the plan itself
Masks = Optional[dict[Site, SupportOrPlan]]


def as_plan(support: SupportOrPlan) -> Plan:
    """A plan given as such, or the components of a Boolean support (``plan_from_support``)."""
    return support if isinstance(support, Plan) else plan_from_support(support)


class Support(abc.ABC):
    name: str
    note: Optional[str] = None  # what the report says about the step, if anything

    @abc.abstractmethod
    def masks(self, ctx: ModelContext) -> Masks:
        """Site -> Boolean support ``[n_out, n_in]`` or its plan; None: every weight's nonzero pattern."""

    @abc.abstractmethod
    def tolerance(self, given: Optional[Tolerance]) -> Tolerance:
        """The validation rule, from the user's tolerance if any."""


class ExactSupport(Support):
    name = "exact"

    def masks(self, ctx: ModelContext) -> Masks:
        return None

    def tolerance(self, given: Optional[Tolerance]) -> Tolerance:
        return given or Tolerance()


@dataclass(frozen=True)
class ConfirmedSupport(Support):
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    name = "confirmed"
    note = "lossy: weights the analysis did not confirm were dropped; see validation"

    def masks(self, ctx: ModelContext) -> Masks:
        masks = analyze_context(ctx, self.analysis, keep_masks=True).masks
        return {op.site: masks[op.weight.name] for op in ctx.ops if op.weight.name in masks}

    def tolerance(self, given: Optional[Tolerance]) -> Tolerance:
        if given is not None and given.rel_l2 is not None:
            return given
        return Tolerance(rel_l2=DEFAULT_LOSSY_TOLERANCE)


@dataclass(frozen=True)
class AnnealedSupport(Support):
    plans: Mapping[Site, Plan] = field(default_factory=dict)  # block and low-rank plans
    name = "annealed"

    def masks(self, ctx: ModelContext) -> Masks:
        return {op.site: self.plans[op.site] if op.site in self.plans else op.matrix() != 0 for op in ctx.ops}

    def tolerance(self, given: Optional[Tolerance]) -> Tolerance:
        return given or Tolerance()


def support_of(value: Union[str, Support], analysis: Optional[AnalysisConfig] = None) -> Support:
    """A Support from its ``--support`` name (``confirmed`` with ``analysis``, default if None), or itself."""
    if isinstance(value, Support):
        return value
    if value not in SUPPORTS:
        raise UnsupportedConstructError(f"support must be one of {SUPPORTS}, got {value!r}")
    return ExactSupport() if value == "exact" else ConfirmedSupport(analysis or AnalysisConfig())
