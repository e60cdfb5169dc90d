"""Top-1 accuracy of ONNX models on a bundled model folder's ``calib.npz`` and ``labels.npz``, in ONNX Runtime.

    python tools/accuracy.py models/digits_mlp models/digits_mlp/model.onnx out.onnx ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def accuracy(model_path: str, feeds: dict, labels: dict) -> float:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (name, expected), = labels.items()
    logits = session.run([name], {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    return float((logits.argmax(-1) == expected).mean())


def main() -> None:
    folder = Path(sys.argv[1])
    feeds, labels = dict(np.load(folder / "calib.npz")), dict(np.load(folder / "labels.npz"))
    for path in sys.argv[2:]:
        print(f"{accuracy(path, feeds, labels):.4f}  {path}")


if __name__ == "__main__":
    main()
