"""Real text for the OCR models, rendered offline: lines of this interpreter's standard-library source drawn
with the DejaVu fonts matplotlib ships (PIL), the text of every image known.

Rule: the top-level ``*.py`` files of the standard library, sorted by name; every ``CALIB_EVERY``-th file
feeds calibration, the others evaluation (so the two never share a file), and an evaluation line whose text
also occurs in calibration is dropped. A usable line has at least ``MIN_LETTERS`` letters and only
characters of the recognizer's dictionary; its whitespace runs become one space.
- ``crops``: from the split's files in order until there are enough, ``ceil(crops / files)`` lines evenly
  spread over each file, a line's start in whole words at most ``CROP_WIDTH`` px wide (padding included),
  drawn on a grey image of height 48 in DejaVu Sans or Sans Mono at 24-30 px, dark text on a light
  background; a text already drawn (or in calibration) is skipped;
- ``pages``: from files evenly spread over the split, up to 40 consecutive lines from the file's middle at
  their indentation on a 640 x 640 page (16-26 px), with the box of each line's ink (``page_boxes``: x0,
  y0, x1, y1);
- the direction classifier's images: every crop upright (label 0) and rotated 180 degrees (label 1).
Every choice comes from one seeded generator per split: the same interpreter gives the same images
(``digest`` hashes the texts and pixels; FreeType in Pillow and the fonts in matplotlib count too).
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from onnx_decomp_models import ocr

CALIB_EVERY, MIN_LETTERS, CROP_WIDTH, MAX_PAD = 4, 3, 312, 8
FONTS = ("DejaVuSans.ttf", "DejaVuSansMono.ttf")
CROP_SIZES, PAGE_SIZES = (24, 26, 28, 30), (16, 18, 20, 22, 24, 26)
COUNTS = {"calib": {"crops": 64, "pages": 8}, "eval": {"crops": 256, "pages": 16}}
SEEDS = {"calib": 1, "eval": 2}
PAGE = ocr.SIZES["det"]


@dataclass
class Split:
    """One split's source files (their names, each once), crops with their texts, pages with their lines."""

    files: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    pages: list[np.ndarray] = field(default_factory=list)
    page_boxes: list[np.ndarray] = field(default_factory=list)
    page_texts: list[list[str]] = field(default_factory=list)

    def cls_images(self) -> tuple[list[np.ndarray], np.ndarray]:
        """The direction classifier's images and labels: every crop upright (0), then rotated 180 (1)."""
        return [*self.crops, *(np.rot90(c, 2).copy() for c in self.crops)], np.repeat([0, 1], len(self.crops))

    def digest(self) -> str:
        hashed = hashlib.sha256("\n".join(self.texts + [t for p in self.page_texts for t in p]).encode())
        for image in [*self.crops, *self.pages]:
            hashed.update(np.ascontiguousarray(image).tobytes())
        return hashed.hexdigest()


@lru_cache(maxsize=None)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def source_files(root: Path = Path(sysconfig.get_paths()["stdlib"])) -> dict[str, list[Path]]:
    """The standard library's top-level files of each split (module rule)."""
    files = sorted(root.glob("*.py"))
    return {"calib": files[::CALIB_EVERY], "eval": [f for i, f in enumerate(files) if i % CALIB_EVERY]}


def usable_lines(path: Path, alphabet: frozenset) -> list[tuple[int, str]]:
    """The file's usable lines (module rule) as (indentation in spaces, text)."""
    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").expandtabs(4).splitlines():
        text = " ".join(raw.split())
        if sum(c.isalpha() for c in text) >= MIN_LETTERS and set(text) <= alphabet:
            lines.append((len(raw) - len(raw.lstrip(" ")), text))
    return lines


def fit(text: str, face: ImageFont.FreeTypeFont, width: int) -> str:
    """The longest start of ``text`` in whole words (or characters, for one long word) within ``width`` px."""
    words, kept = text.split(" "), ""
    for word in words:
        longer = f"{kept} {word}" if kept else word
        if face.getlength(longer) > width:
            break
        kept = longer
    if not kept:
        kept = text[:max(1, sum(face.getlength(text[:n]) <= width for n in range(1, len(text) + 1)))]
    return kept


def render_crop(text: str, face: ImageFont.FreeTypeFont, pad: int, ink: int, paper: int) -> np.ndarray:
    """One line on a grey image of height 48, ``pad`` px on either side, centred on the font's height."""
    ascent, descent = face.getmetrics()
    width = int(np.ceil(face.getlength(text))) + 2 * pad
    image = Image.new("L", (width, ocr.SIZES["rec"][0]), paper)
    ImageDraw.Draw(image).text((pad, (ocr.SIZES["rec"][0] - ascent - descent) // 2), text, font=face, fill=ink)
    return np.asarray(image)


def render_page(lines: list[tuple[int, str]], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Consecutive lines at their indentation on one page: the image, the ink boxes, the texts drawn."""
    face = font(FONTS[rng.integers(len(FONTS))], int(rng.choice(PAGE_SIZES)))
    paper, ink = int(rng.integers(215, 256)), int(rng.integers(0, 70))
    image = Image.new("L", PAGE[::-1], paper)
    draw = ImageDraw.Draw(image)
    step, margin = face.size * 1.5, 16
    boxes, texts, y = [], [], margin
    for indent, text in lines:
        if y + step > PAGE[0] - margin:
            break
        x = margin + indent * face.getlength(" ")
        text = fit(text, face, int(PAGE[1] - margin - x))
        draw.text((x, y), text, font=face, fill=ink)
        boxes.append(draw.textbbox((x, y), text, font=face))
        texts.append(text)
        y += step
    return np.asarray(image), np.array(boxes, np.float32).reshape(-1, 4), texts


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def render_split(name: str, exclude: frozenset = frozenset()) -> Split:
    """The crops and pages of split ``name`` (module rule), none of whose crop texts is in ``exclude``."""
    rng, alphabet = np.random.default_rng(SEEDS[name]), frozenset(ocr.characters()) - {"blank"}
    files, counts, split = source_files()[name], COUNTS[name], Split()
    per_file = -(-counts["crops"] // len(files))
    for path in files:
        lines = usable_lines(path, alphabet)
        if len(split.crops) < counts["crops"]:
            for _, text in spread(lines, per_file):
                face = font(FONTS[rng.integers(len(FONTS))], int(rng.choice(CROP_SIZES)))
                text = fit(text, face, CROP_WIDTH - 2 * MAX_PAD)
                pad, ink, paper = int(rng.integers(2, MAX_PAD + 1)), int(rng.integers(0, 70)), int(rng.integers(200, 256))
                if (text in exclude or text in split.texts or len(split.crops) == counts["crops"]
                        or sum(c.isalpha() for c in text) < MIN_LETTERS):
                    continue
                split.crops.append(render_crop(text, face, pad, ink, paper))
                split.texts.append(text)
                split.files += [path.name] if path.name not in split.files else []
    page_files = spread(files, counts["pages"])
    for path in page_files:
        lines = usable_lines(path, alphabet)
        start = len(lines) // 2
        image, boxes, texts = render_page(lines[start:start + 40], rng)
        split.pages.append(image)
        split.page_boxes.append(boxes)
        split.page_texts.append(texts)
        split.files += [path.name] if path.name not in split.files else []
    return split


@lru_cache(maxsize=None)
def splits() -> tuple[Split, Split]:
    """Calibration and evaluation (module rule)."""
    calib = render_split("calib")
    return calib, render_split("eval", frozenset(calib.texts))


def calibration(kind: str) -> dict[str, np.ndarray]:
    """The calibration split as ``kind``'s input, keyed by its input name."""
    calib = splits()[0]
    if kind == "rec":
        return {ocr.INPUT: ocr.rec_input(calib.crops)}
    if kind == "det":
        return {ocr.INPUT: ocr.det_input(calib.pages)}
    return {ocr.INPUT: ocr.cls_input(calib.cls_images()[0][::2])}  # every other crop, upright and rotated


def save_calibration(folder: Path = Path(__file__).parent / "ocr") -> None:
    """``folder/<kind>_calib.npz`` for every model (about 2 MB in all) and ``calib.json``: the interpreter
    and the digests of both splits."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("det", "rec", "cls"):
        np.savez_compressed(folder / f"{kind}_calib.npz", **calibration(kind))
    calib, evaluation = splits()
    meta = {"python": sys.version.split()[0], "calib_digest": calib.digest(), "eval_digest": evaluation.digest()}
    (folder / "calib.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    save_calibration()
