"""Null models: the distribution a weight entry would have if training had never confirmed it.

Orientation: a weight is ``W[n_out, n_in]``; ``fan_in = n_in``, ``fan_out = n_out`` (MatMul ``B[K, N]`` and
Gemm ``transB=0`` hold ``W.T``; Gemm ``transB=1`` holds ``W``). A Conv kernel ``[C_out, C_in / group, k...]``
is ``W [C_out, C_in / group * window]`` (``window = prod(k)``) with PyTorch's and Keras's fans:
``fan_in = C_in / group * window``, ``fan_out = C_out * window`` (``torch.nn.init._calculate_fan_in_and_fan_out``
reads the tensor's dims 0 and 1 times the window, whatever the group).

Spec strings name a null and its parameters, ``name`` or ``name(key=value, ...)``:

| spec | null distribution of an entry |
|---|---|
| ``torch-linear`` | U(-b, b), b = 1/sqrt(fan_in) (PyTorch nn.Linear default) |
| ``kaiming-uniform(a=...)`` | U(-b, b), b = sqrt(6 / ((1 + a^2) fan_in)); a defaults to sqrt(5) (= torch-linear) |
| ``kaiming-normal`` | N(0, 2 / fan_in) |
| ``xavier-uniform`` | U(-b, b), b = sqrt(6 / (fan_in + fan_out)) |
| ``xavier-normal`` | N(0, 2 / (fan_in + fan_out)) |
| ``normal(sigma=...)`` | N(0, sigma^2) |
| ``trunc-normal(sigma=..., bound=...)`` | N(0, sigma^2) cut at +-bound; bound defaults to 2 sigma (TensorFlow, JAX); PyTorch's ``trunc_normal_`` cuts at +-2 absolute: ``bound=2`` |
| ``reference`` | the initial tensor W0 is known; an entry training never touched keeps it exactly, so the update d = W - W0 is tested against float32 rounding: d ~ N(0, tau^2), tau = 1e-7 max abs(W0) (unchanged entries get p = 1). Weight decay touches every entry: use a distribution null for models trained with it |
| ``empirical`` | N(0, s^2), s = 1.4826 MAD(W): fitted to the central bulk of the trained tensor itself |
| ``paddle-conv`` | N(0, 2 / (C_in * window)), C_in every input channel (not per group): Paddle's Conv default |

Defaults by framework, guessed from the model's ``producer_name`` when nothing is recorded or chosen
(``guess_null``): PyTorch (``pytorch``; also the guess for an empty or unknown producer): ``torch-linear`` for
MatMul/Gemm (nn.Linear), ``kaiming-uniform`` (a = sqrt(5), the same bound 1/sqrt(fan_in)) for Conv
(``_ConvNd.reset_parameters``); TensorFlow/Keras (``tf2onnx``, ``keras2onnx``, ``tensorflow``, ``tflite``):
``xavier-uniform`` for both (Dense and Conv ``kernel_initializer="glorot_uniform"``); Paddle (``PaddlePaddle``,
``paddle2onnx``): ``xavier-uniform`` for Linear (``ParamAttr._set_default_param_initializer``: ``Xavier()``,
uniform) and ``paddle-conv`` for Conv (``paddle.nn.layer.conv._ConvNd._get_default_param_initializer``: std
``sqrt(2 / (prod(kernel_size) * in_channels))``). Models often override these defaults (PaddleOCR's backbones
use KaimingNormal): a guess is reported as one.

The test is one-sided: ``p = P0(|w0| >= |w|)``; a weight decayed below its initial scale is not confirmed.

Metadata contract (written by the PyTorch exporter, read here): ONNX ``metadata_props`` key
``onnx_decomp.null/<initializer name>`` holds a spec string; key ``onnx_decomp.init_reference`` holds the
path, relative to the model file, of an ONNX model with the initial tensors under the same initializer names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import special

from onnx_decomp.errors import UnsupportedConstructError

NULL_KEY_PREFIX = "onnx_decomp.null/"
REFERENCE_KEY = "onnx_decomp.init_reference"
FRAMEWORK_DEFAULTS = (  # producer_name fragment (lower case), framework, (MatMul/Gemm null, Conv null)
    (("torch",), "PyTorch", ("torch-linear", "kaiming-uniform")),
    (("tf2onnx", "keras", "tensorflow", "tflite"), "TensorFlow/Keras", ("xavier-uniform", "xavier-uniform")),
    (("paddle",), "Paddle", ("xavier-uniform", "paddle-conv")),
)
MAD_SCALE = 1.4826
UNCHANGED = 1e-7


def _normal_sf_abs(x: np.ndarray, sigma: float) -> np.ndarray:
    """P(|N(0, sigma^2)| >= x) = erfc(x / (sigma sqrt 2)), in one array of x's size."""
    scaled = np.abs(x) / (sigma * math.sqrt(2.0))
    return special.erfc(scaled, out=scaled) if scaled.ndim else special.erfc(scaled)


@dataclass(frozen=True)
class Uniform:
    bound: float

    def sf_abs(self, w: np.ndarray) -> np.ndarray:
        """``clip(1 - |w| / bound, 0, 1)``, in one array of w's size."""
        p = np.abs(w) / self.bound
        if not p.ndim:
            return np.clip(1.0 - p, 0.0, 1.0)
        np.subtract(1.0, p, out=p)
        return np.clip(p, 0.0, 1.0, out=p)

    def pdf(self, w: np.ndarray) -> np.ndarray:
        return np.where(np.abs(w) <= self.bound, 0.5 / self.bound, 0.0)

    @property
    def std(self) -> float:
        return self.bound / math.sqrt(3.0)


@dataclass(frozen=True)
class Normal:
    sigma: float

    def sf_abs(self, w: np.ndarray) -> np.ndarray:
        if self.sigma == 0:
            return (np.abs(w) == 0).astype(np.float64)
        return _normal_sf_abs(w, self.sigma)

    def pdf(self, w: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * (np.asarray(w) / self.sigma) ** 2) / (self.sigma * math.sqrt(2 * math.pi))

    @property
    def std(self) -> float:
        return self.sigma


@dataclass(frozen=True)
class TruncNormal:
    sigma: float
    bound: float

    def sf_abs(self, w: np.ndarray) -> np.ndarray:
        tail = _normal_sf_abs(np.float64(self.bound), self.sigma)
        inside = (_normal_sf_abs(w, self.sigma) - tail) / (1.0 - tail)
        return np.clip(np.where(np.abs(w) < self.bound, inside, 0.0), 0.0, 1.0)

    def pdf(self, w: np.ndarray) -> np.ndarray:
        mass = 1.0 - _normal_sf_abs(np.float64(self.bound), self.sigma)
        return np.where(np.abs(w) <= self.bound, Normal(self.sigma).pdf(w) / mass, 0.0)

    @property
    def std(self) -> float:
        """The truncated normal's standard deviation: sigma^2 (1 - 2 c phi(c) / (2 Phi(c) - 1)), c = bound/sigma."""
        c = self.bound / self.sigma
        mass = 1.0 - _normal_sf_abs(np.float64(c), 1.0)
        return self.sigma * math.sqrt(max(1.0 - 2.0 * c * Normal(1.0).pdf(c) / mass, 0.0))


@dataclass(frozen=True)
class Update:
    """The ``reference`` null on W: the update ``d = W - W0`` against float32 rounding (module table)."""

    initial: np.ndarray

    @property
    def std(self) -> float:
        """The spread of an untouched update: float32 rounding."""
        return self.rounding

    @property
    def rounding(self) -> float:
        return UNCHANGED * max(float(np.abs(self.initial).max(initial=0.0)), 1e-30)

    def sf_abs(self, w: np.ndarray) -> np.ndarray:
        return Normal(self.rounding).sf_abs(np.asarray(w, dtype=np.float64) - self.initial)

    def pdf(self, w: np.ndarray) -> np.ndarray:
        """Where the weights would be had training touched nothing: the initial values' histogram density."""
        counts, edges = np.histogram(self.initial.astype(np.float64), bins=120, density=True)
        index = np.clip(np.searchsorted(edges, w) - 1, 0, len(counts) - 1)
        inside = (np.asarray(w) >= edges[0]) & (np.asarray(w) <= edges[-1])
        return np.where(inside, counts[index], 0.0)


def empirical_sigma(w: np.ndarray) -> float:
    """Robust scale of the central bulk: 1.4826 * median absolute deviation."""
    return MAD_SCALE * float(np.median(np.abs(w - np.median(w))))


_SPEC = re.compile(r"^\s*([a-z][a-z-]*)\s*(?:\((.*)\))?\s*$")
_PARAMS = {"torch-linear": (), "kaiming-uniform": ("a",), "kaiming-normal": (), "xavier-uniform": (),
           "xavier-normal": (), "normal": ("sigma",), "trunc-normal": ("sigma", "bound"),
           "reference": (), "empirical": (), "paddle-conv": ()}
_REQUIRED = {"normal": ("sigma",), "trunc-normal": ("sigma",)}


@dataclass(frozen=True)
class NullSpec:
    """A parsed spec string; ``build`` makes the distribution for one weight."""

    name: str
    params: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.name}({inner})" if inner else self.name

    def build(self, w: np.ndarray, initial: Optional[np.ndarray] = None, window: int = 1, groups: int = 1):
        """The null for ``w`` (shape ``[n_out, n_in]``; a Conv's kernel unrolled, ``window`` positions per input
        channel, ``groups`` groups: module orientation); ``initial`` is required for ``reference``."""
        fan_in, fan_out = w.shape[1], w.shape[0] * window
        p = dict(self.params)
        if self.name in ("torch-linear", "kaiming-uniform"):
            a = p.get("a", math.sqrt(5.0))
            return Uniform(math.sqrt(6.0 / ((1.0 + a * a) * fan_in)))
        if self.name == "kaiming-normal":
            return Normal(math.sqrt(2.0 / fan_in))
        if self.name == "xavier-uniform":
            return Uniform(math.sqrt(6.0 / (fan_in + fan_out)))
        if self.name == "xavier-normal":
            return Normal(math.sqrt(2.0 / (fan_in + fan_out)))
        if self.name == "normal":
            return Normal(p["sigma"])
        if self.name == "trunc-normal":
            return TruncNormal(p["sigma"], p.get("bound", 2.0 * p["sigma"]))
        if self.name == "empirical":
            return Normal(empirical_sigma(w))
        if self.name == "paddle-conv":
            return Normal(math.sqrt(2.0 / (fan_in * groups)))
        if initial is None:
            raise UnsupportedConstructError("null 'reference' needs the initial tensor (--init-reference)")
        if initial.shape != w.shape:
            raise UnsupportedConstructError(f"reference tensor has shape {initial.shape}, weight {w.shape}")
        return Update(np.asarray(initial))  # as stored: promoted per use, never held twice its size


def parse_null_spec(text: str) -> NullSpec:
    """``"kaiming-uniform(a=2.236)"`` -> NullSpec; unknown names or parameters raise a one-line error."""
    match = _SPEC.match(text)
    if not match or match.group(1) not in _PARAMS:
        raise UnsupportedConstructError(f"unknown null model {text!r}; known: {', '.join(_PARAMS)}")
    name, inner = match.group(1), match.group(2)
    params = []
    for item in filter(None, (part.strip() for part in (inner or "").split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not sep or key not in _PARAMS[name] or not math.isfinite(number):
            raise UnsupportedConstructError(f"null {name!r}: bad parameter {item!r} (takes {_PARAMS[name]})")
        params.append((key, number))
    missing = set(_REQUIRED.get(name, ())) - {k for k, _ in params}
    if missing:
        raise UnsupportedConstructError(f"null {name!r} needs {', '.join(sorted(missing))}=...")
    if any(v <= 0 for k, v in params if k in ("sigma", "bound")):
        raise UnsupportedConstructError(f"null {name!r}: sigma and bound must be positive")
    return NullSpec(name, tuple(params))


@dataclass(frozen=True)
class NullChoice:
    spec: NullSpec
    source: str  # "metadata", "user" or "guess"


def nulls_from_metadata(metadata: Mapping[str, str]) -> dict[str, NullSpec]:
    """Initializer name -> spec, from ``onnx_decomp.null/<name>`` metadata keys."""
    return {key[len(NULL_KEY_PREFIX):]: parse_null_spec(value)
            for key, value in metadata.items() if key.startswith(NULL_KEY_PREFIX)}


def parse_user_nulls(texts: Sequence[str]) -> list[tuple[str, NullSpec]]:
    """``["xavier-uniform", "fc*=normal(sigma=0.02)"]`` -> ordered (glob, spec) rules; a bare spec is ``*``.
    The glob ends at the first ``=`` before any parenthesis."""
    rules = []
    for text in texts:
        if "=" in text.split("(", 1)[0]:
            pattern, spec = text.split("=", 1)
        else:
            pattern, spec = "*", text
        rules.append((pattern.strip() or "*", parse_null_spec(spec)))
    return rules


def guess_null(producer: str, conv: bool) -> tuple[NullSpec, str]:
    """The framework default (module table) for a Conv or a MatMul/Gemm weight of a model written by
    ``producer``, and why it was guessed; PyTorch's for an empty or unknown producer."""
    for fragments, framework, specs in FRAMEWORK_DEFAULTS:
        if any(fragment in producer.lower() for fragment in fragments):
            return parse_null_spec(specs[conv]), f"producer_name {producer!r}: {framework} default"
    reason = f"unknown producer_name {producer!r}" if producer else "no producer_name"
    return parse_null_spec(FRAMEWORK_DEFAULTS[0][2][conv]), f"{reason}: PyTorch default"


def choose_null(name: str, metadata: Mapping[str, NullSpec], rules: Sequence[tuple[str, NullSpec]],
                guess: NullSpec = NullSpec("torch-linear")) -> NullChoice:
    """Metadata written by our exporter > the first user rule whose glob matches ``name`` > ``guess``."""
    if name in metadata:
        return NullChoice(metadata[name], "metadata")
    for pattern, spec in rules:
        if fnmatchcase(name, pattern):
            return NullChoice(spec, "user")
    return NullChoice(guess, "guess")
