"""Which structure to cut each MatMul/Gemm into: supports, chain co-clustering, and the cost gate."""
