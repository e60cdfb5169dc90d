"""Graph rewrites over onnx-graphsurgeon graphs, each driven by an explicit block plan."""
