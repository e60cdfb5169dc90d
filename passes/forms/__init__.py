"""Rewrite forms, one module each, registered once here by name (``FORMS`` for MatMul/Gemm, ``CONV_FORMS`` for
Conv); the front end's option values are these names."""

from .base import Form
from .batched import Batched
from .branches import Branches
from .conv import CONV_FORMS, ConvBranches, ConvGrouped, ConvLowRank
from .conv1x1 import Conv1x1
from .einsum import BlockEinsum
from .lowrank import LowRank
from .transposed import Transposed

FORMS: dict[str, Form] = {form.name: form for form in (Branches(), Batched(), Transposed(), BlockEinsum(), Conv1x1(),
                                                       LowRank())}

__all__ = ["Form", "CONV_FORMS", "ConvBranches", "ConvGrouped", "ConvLowRank", "Branches", "Batched", "BlockEinsum", "Conv1x1", "LowRank", "Transposed", "FORMS"]
