"""PaddleOCR's pretrained text models as shipped in the ``rapidocr-onnxruntime`` wheel, with their pre- and
post-processing in numpy (``pip install onnx-decomp[ocr]``).

Three models, each with one input ``x`` [N, 3, H, W] (BGR scaled to [-1, 1]: ``(pixel / 255 - 0.5) / 0.5``):
- ``det``: PP-OCRv4 detection (DB): a text probability map [N, 1, H, W]; H and W multiples of 32;
  boxes by the package's own ``DBPostProcess`` (threshold 0.3, box score 0.5, unclip 1.6, dilation).
- ``rec``: PP-OCRv4 recognition (CTC): per-column class probabilities [N, W / 8, 6625] at height 48; the
  classes are blank, the 6623 characters in the model's metadata (``character``) and a space.
- ``cls``: mobile v2.0 text direction: probabilities of upright and rotated 180 degrees [N, 2], at 48 x 192.

A crop narrower than the input is padded on the right with zeros after normalisation (the package's rule);
a crop wider than a classifier input is squeezed to its width. Graph facts: ``ocr_graph``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from PIL import Image

MODELS = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
          "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
SIZES = {"det": (640, 640), "rec": (48, 320), "cls": (48, 192)}  # (H, W) this project feeds and times
INPUT = "x"
DB_OPTIONS = {"thresh": 0.3, "box_thresh": 0.5, "max_candidates": 1000, "unclip_ratio": 1.6,
              "use_dilation": True, "score_mode": "fast"}  # the package's config.yaml


def model_path(name: str) -> Path:
    """The packaged ONNX file of ``det``, ``rec`` or ``cls``."""
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / MODELS[name]


def characters() -> list[str]:
    """The recognition classes: blank, the model's dictionary, space."""
    model = onnx.load(model_path("rec"), load_external_data=False)
    table = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    return ["blank", *table, " "]


def normalize(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Grey or BGR uint8 images [h, w(, 3)] of height ``size[0]`` and width at most ``size[1]``, as one
    batch [N, 3, H, W] scaled to [-1, 1], each padded on the right with zeros."""
    batch = np.zeros((len(images), 3, *size), np.float32)
    for row, image in zip(batch, images):
        pixels = np.asarray(image, np.float32)
        pixels = np.repeat(pixels[..., None], 3, -1) if pixels.ndim == 2 else pixels
        h, w = pixels.shape[:2]
        if h != size[0] or w > size[1]:
            raise ValueError(f"an image of {h} x {w} does not fit {size[0]} x {size[1]}")
        row[:, :, :w] = (pixels.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return batch


def fit_height(image: np.ndarray, height: int, max_width: int) -> np.ndarray:
    """``image`` resized (bilinear) to ``height``, keeping its aspect ratio up to ``max_width``."""
    h, w = image.shape[:2]
    width = min(max_width, int(np.ceil(height * w / h)))
    if (h, w) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def rec_input(crops: Sequence[np.ndarray], width: int = SIZES["rec"][1]) -> np.ndarray:
    """Text-line crops as the recognizer's input at height 48 and ``width``."""
    height = SIZES["rec"][0]
    return normalize([fit_height(c, height, width) for c in crops], (height, width))


def ctc_decode(probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Greedy CTC: the best class per column, repeats merged, blanks dropped; outer spaces stripped (the
    padding after a line sometimes reads as one)."""
    best = probs.argmax(-1)
    keep = np.ones_like(best, bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != 0
    return ["".join(classes[i] for i in row[mask]).strip(" ") for row, mask in zip(best, keep)]


def det_input(pages: Sequence[np.ndarray]) -> np.ndarray:
    """Pages (height and width multiples of 32, all one size) as the detector's input."""
    return normalize(pages, pages[0].shape[:2])


def det_boxes(prob_map: np.ndarray) -> list[np.ndarray]:
    """Each page's text boxes [n, 4, 2] (x, y corners, int32) from the detector's map [N, 1, H, W]."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    post = DBPostProcess(**DB_OPTIONS)
    return [post(page[None], page.shape[1:])[0].reshape(-1, 4, 2) for page in prob_map]


def cls_input(crops: Sequence[np.ndarray]) -> np.ndarray:
    """Text-line crops as the direction classifier's input (48 x 192, wider crops squeezed)."""
    height, width = SIZES["cls"]
    return normalize([fit_height(c, height, width) for c in crops], (height, width))


def cls_labels(probs: np.ndarray) -> np.ndarray:
    """0 (upright) or 1 (rotated 180 degrees) per crop."""
    return probs.argmax(-1)
