"""The bundled models: definitions and deterministic training scripts (installed as ``onnx_decomp_models``).

Run a script from the repository root, e.g. ``python models/digits_mlp.py``; tests and tools import the
shared definitions (``digits``, ``localized``, ``common``) from this package.
"""
