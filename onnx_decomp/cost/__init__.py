"""What a model or a rewrite costs: multiply-accumulates and parameters, and time measured in ONNX Runtime."""
