"""Top-1 accuracy of ONNX models on a labelled .npz (``input`` and ``label`` arrays), in ONNX Runtime.

    python tools/accuracy.py models/digits_mlp/test.npz models/digits_mlp/model.onnx out.onnx ...
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort


def accuracy(model_path: str, inputs: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    return float((logits.argmax(-1) == labels).mean())


def main() -> None:
    data = np.load(sys.argv[1])
    for path in sys.argv[2:]:
        print(f"{accuracy(path, data['input'], data['label']):.4f}  {path}")


if __name__ == "__main__":
    main()
