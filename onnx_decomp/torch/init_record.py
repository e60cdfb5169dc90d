"""What every parameter was at initialization: its null recipe and a copy of its initial tensor.

Call ``record_init`` right after the model is built and initialized, before any training step.

Default recipes (PyTorch's own initializers), by the module that owns the parameter:

| parameter | recipe |
|---|---|
| ``nn.Linear.weight`` (also attention ``out_proj``) | ``torch-linear`` (= ``kaiming-uniform(a=sqrt(5))``) |
| ``nn.MultiheadAttention.in_proj_weight`` / ``q,k,v_proj_weight`` | ``xavier-uniform`` |
| ``nn.Embedding.weight`` | ``normal(sigma=1)`` |

Other parameters (biases, norms, convolutions) get no recipe unless the user names one. ``overrides`` maps a
parameter name, or an ``fnmatch`` glob over names, to a spec string (``"xavier-uniform"``,
``"normal(sigma=0.02)"``, ``"reference"``); overrides replace defaults and apply in order (a later one wins
where several match); an override that matches no parameter is an error. A uniform recipe that the initial
tensor exceeds is logged as a warning (the model was probably initialized some other way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Mapping, Optional

import numpy as np
import torch

from onnx_decomp.stats.null_models import Uniform, parse_null_spec

logger = logging.getLogger(__name__)

_DEFAULTS = (
    (torch.nn.Linear, ("weight",), "torch-linear"),
    (torch.nn.MultiheadAttention, ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
     "xavier-uniform"),
    (torch.nn.Embedding, ("weight",), "normal(sigma=1)"),
)


@dataclass(frozen=True)
class InitRecord:
    """``specs``: parameter name -> null spec string; ``tensors``: parameter name -> initial value (a copy)."""

    specs: Mapping[str, str]
    tensors: Mapping[str, np.ndarray]


def _default_specs(model: torch.nn.Module) -> dict[str, str]:
    specs = {}
    for module_name, module in model.named_modules():
        for kind, names, spec in _DEFAULTS:
            if isinstance(module, kind):
                for name in names:
                    if isinstance(getattr(module, name, None), torch.nn.Parameter):
                        specs[f"{module_name}.{name}" if module_name else name] = spec
    return specs


def _warn_if_outside(name: str, spec: str, value: np.ndarray) -> None:
    parsed = parse_null_spec(spec)
    if value.ndim != 2 or parsed.name == "reference":
        return
    null = parsed.build(value)
    if isinstance(null, Uniform) and np.abs(value).max(initial=0.0) > null.bound * (1 + 1e-6):
        logger.warning("%s: recipe %s bounds |w| <= %.4g but the tensor reaches %.4g; name the real recipe "
                       "in record_init(overrides=...)", name, spec, null.bound, float(np.abs(value).max()))


def record_init(model: torch.nn.Module, overrides: Optional[Mapping[str, str]] = None) -> InitRecord:
    """Recipes (defaults of the module table, then ``overrides``) and copies of all parameters."""
    parameters = {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters()}
    specs = _default_specs(model)
    for pattern, spec in (overrides or {}).items():
        parse_null_spec(spec)  # a bad spec fails here, not at analysis time
        matched = [name for name in parameters if fnmatchcase(name, pattern)]
        if not matched:
            raise ValueError(f"override {pattern!r} matches no parameter of the model")
        for name in matched:
            specs[name] = spec
    specs = {name: spec for name, spec in specs.items() if name in parameters}
    for name, spec in specs.items():
        _warn_if_outside(name, spec, parameters[name])
    logger.debug("recorded init of %d parameters, %d with a recipe", len(parameters), len(specs))
    return InitRecord(specs, parameters)
