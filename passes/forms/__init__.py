"""Rewrite forms, one module each; ``DEFAULT_FORMS`` in order of preference when nothing chooses."""

from .base import Form
from .batched import Batched
from .branches import Branches
from .einsum import BlockEinsum
from .grouped_conv import GroupedConv
from .transposed import Transposed

DEFAULT_FORMS: tuple[Form, ...] = (Branches(),)
ALL_FORMS: tuple[Form, ...] = (Branches(), Batched(), Transposed(), BlockEinsum(), GroupedConv())
FORMS_BY_NAME = {form.name: form for form in ALL_FORMS}

__all__ = ["Form", "Branches", "Batched", "BlockEinsum", "GroupedConv", "Transposed", "DEFAULT_FORMS",
           "ALL_FORMS", "FORMS_BY_NAME"]
