"""onnx-decomp: decompose trained MatMul/Gemm weights into independent sub-operators."""
