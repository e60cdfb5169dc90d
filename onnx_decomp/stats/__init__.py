"""The statistical criterion: null models, the FDR-controlled decision, and the per-weight analysis."""
