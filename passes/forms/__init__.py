"""Rewrite forms, one module each; ``DEFAULT_FORMS`` in order of preference."""

from .base import Form
from .branches import Branches

DEFAULT_FORMS: tuple[Form, ...] = (Branches(),)

__all__ = ["Form", "Branches", "DEFAULT_FORMS"]
