"""Convolution patches: the rows a Conv's matrix view ``W [C_out, C_in * window]`` multiplies (one group).

Rule: output position ``p`` of a Conv reads, for every input channel ``c`` and kernel offset ``k``, the input at
``p * stride + k * dilation - pad_begin`` (zero outside the input); its row holds those values channel-major,
the kernel's own order, so that ``row @ W.T + B`` is the Conv's output at ``p``. A 1 x 1 Conv of stride 1
without padding reads one pixel: its rows are the pixels. ``auto_pad`` (``SAME_UPPER``, ``SAME_LOWER``,
``VALID``) becomes explicit pads. Positions are numbered over ``[N, *output spatial]`` in C order, so a seeded
choice of positions picks the same rows from the dense and the cut model's activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Kernel, strides, dilations and pads (begins, ends) of a Conv at one input size."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begins: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, attrs: Mapping, kernel: Sequence[int], spatial: Sequence[int]) -> "Geometry":
        """The geometry of a Conv with ``attrs`` and ``kernel`` dims reading ``spatial`` input dims."""
        dims = len(kernel)
        strides = tuple(attrs.get("strides", (1,) * dims))
        dilations = tuple(attrs.get("dilations", (1,) * dims))
        auto_pad = attrs.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            totals = [max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
                      for n, s, k, d in zip(spatial, strides, kernel, dilations)]
            small = [t // 2 for t in totals]
            large = [t - t // 2 for t in totals]
            begins, ends = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad == "VALID":
            begins = ends = [0] * dims
        else:
            pads = list(attrs.get("pads", (0,) * (2 * dims)))
            begins, ends = pads[:dims], pads[dims:]
        return cls(tuple(kernel), strides, dilations, tuple(begins), tuple(ends))

    @property
    def pointwise(self) -> bool:
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) \
            and not any(self.begins) and not any(self.ends)

    def output(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Output spatial dims for input ``spatial`` dims."""
        return tuple((n + b + e - (k - 1) * d - 1) // s + 1 for n, b, e, k, d, s in
                     zip(spatial, self.begins, self.ends, self.kernel, self.dilations, self.strides))

    def positions(self, shape: Sequence[int]) -> int:
        """Output positions of an input of ``shape`` ``[N, C, *spatial]``."""
        return shape[0] * int(np.prod(self.output(shape[2:])))

    def rows(self, x: np.ndarray, chosen: Optional[np.ndarray] = None) -> np.ndarray:
        """``[positions, C * window]``: the rows of the module rule at ``chosen`` positions (None: all)."""
        channels = x.shape[1]
        if self.pointwise:
            flat = np.moveaxis(x, 1, -1).reshape(-1, channels)
            return flat if chosen is None else flat[chosen]
        out = self.output(x.shape[2:])
        chosen = np.arange(x.shape[0] * int(np.prod(out))) if chosen is None else chosen
        padded = np.pad(x, [(0, 0), (0, 0), *zip(self.begins, self.ends)])
        where = np.unravel_index(chosen, (x.shape[0], *out))
        grid = np.meshgrid(*(np.arange(k) * d for k, d in zip(self.kernel, self.dilations)), indexing="ij")
        spatial = [(where[1 + i] * s)[:, None, None] + offsets.reshape(1, 1, -1)
                   for i, (s, offsets) in enumerate(zip(self.strides, grid))]
        values = padded[(where[0][:, None, None], np.arange(channels)[None, :, None], *spatial)]
        return values.reshape(len(chosen), -1)
