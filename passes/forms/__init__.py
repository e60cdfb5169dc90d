"""Rewrite forms, one module each, registered once here by name (``FORMS``); the front end's option values
are these names."""

from .base import Form
from .batched import Batched
from .branches import Branches
from .conv1x1 import Conv1x1
from .einsum import BlockEinsum
from .lowrank import LowRank
from .transposed import Transposed

FORMS: dict[str, Form] = {form.name: form for form in (Branches(), Batched(), Transposed(), BlockEinsum(), Conv1x1(),
                                                       LowRank())}

__all__ = ["Form", "Branches", "Batched", "BlockEinsum", "Conv1x1", "LowRank", "Transposed", "FORMS"]
