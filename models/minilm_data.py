"""Retrieval pairs from this interpreter's standard library (docstring summary -> docstring body), tokenised
for MiniLM.

    python models/minilm_data.py       # writes models/minilm/calib.npz, eval.npz and pairs.json

Corpus: every ``*.py`` file under the standard library, sorted by path, but for ``site-packages`` and test
packages (``test``, ``tests``, ``idle_test``); the SHA-256 of the relative paths and bytes is stored
(``corpus_sha256`` in ``pairs.json``): another Python version has another corpus. Each function or class
docstring (``ast.get_docstring``, cleaned) whose first paragraph (the summary, whitespace joined) has at
least ``MIN_SUMMARY`` words and whose rest (the body) has at least ``MIN_BODY`` words is a pair. Pairs whose
summary or body occurs more than once in the corpus are dropped: a query has one right answer, and no text
is in both sets.

Split by module: a module's pairs are for calibration when the first byte of SHA-256(module name) is below
``CALIB_SHARE * 256``, else for evaluation. Each set in a seeded order, the first ``CALIB`` / ``EVAL`` pairs.

Files, inputs keyed by the model's input names (``minilm.INPUTS``, int64, padded and truncated to
``minilm.SEQUENCE`` tokens): ``eval.npz`` and ``calib.npz`` hold ``2n`` rows, the ``n`` summaries then the
``n`` bodies (row ``i`` and row ``n + i`` are pair ``i``); ``pairs.json`` holds the corpus digest and, per
set, each pair's module, qualified name, texts and true (untruncated) token counts.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnx_decomp_models import minilm
from onnx_decomp_models.common import HERE

OUT = HERE / "minilm"
SEED, CALIB, EVAL, CALIB_SHARE = 0, 128, 1000, 0.2
MIN_SUMMARY, MIN_BODY = 3, 10
SKIPPED = {"site-packages", "test", "tests", "idle_test"}
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class Pair:
    module: str
    name: str
    summary: str
    body: str


def definitions(node: ast.AST, prefix: str = ""):
    """``(qualified name, node)`` of every function and class under ``node``, in source order."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, DEFINITIONS):
            yield prefix + child.name, child
            yield from definitions(child, f"{prefix}{child.name}.")
        else:
            yield from definitions(child, prefix)


def pair(module: str, name: str, docstring: str):
    head, blank, body = docstring.partition("\n\n")
    summary, body = " ".join(head.split()), body.strip()
    if blank and len(summary.split()) >= MIN_SUMMARY and len(body.split()) >= MIN_BODY:
        return Pair(module, name, summary, body)
    return None


def corpus_pairs(root: Path = Path(sysconfig.get_paths()["stdlib"])) -> tuple[list[Pair], str]:
    """Every pair of the corpus whose texts are unique, in corpus order, and the corpus digest."""
    digest, pairs = hashlib.sha256(), []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIPPED & set(relative.parts):
            continue
        source = path.read_bytes()
        digest.update(relative.as_posix().encode() + b"\0" + source)
        module = ".".join(relative.with_suffix("").parts)
        for name, node in definitions(ast.parse(source)):
            docstring = ast.get_docstring(node)
            found = docstring and pair(module, name, docstring)
            if found:
                pairs.append(found)
    counts = Counter(text for pair in pairs for text in (pair.summary, pair.body))
    return [p for p in pairs if counts[p.summary] == counts[p.body] == 1], digest.hexdigest()


def is_calibration(module: str) -> bool:
    return hashlib.sha256(module.encode()).digest()[0] < CALIB_SHARE * 256


def split(pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """Calibration and evaluation pairs (module docstring)."""
    sets = []
    for calibration, size in ((True, CALIB), (False, EVAL)):
        chosen = [p for p in pairs if is_calibration(p.module) == calibration]
        order = np.random.default_rng(SEED).permutation(len(chosen))[:size]
        if len(order) < size:
            raise ValueError(f"the corpus has {len(chosen)} {'calibration' if calibration else 'evaluation'} "
                             f"pairs, fewer than {size}")
        sets.append([chosen[i] for i in order])
    return sets[0], sets[1]


def texts(pairs: list[Pair]) -> list[str]:
    """The rows of a set: summaries, then bodies."""
    return [p.summary for p in pairs] + [p.body for p in pairs]


def write(folder: Path = OUT) -> dict:
    """Build both sets and write the module's files; returns what ``pairs.json`` holds."""
    pairs, digest = corpus_pairs()
    calib, evaluation = split(pairs)
    counter = minilm.tokenizer(None)
    record = {"python": sys.version.split()[0], "corpus_sha256": digest, "corpus_pairs": len(pairs),
              "sequence": minilm.SEQUENCE}
    folder.mkdir(parents=True, exist_ok=True)
    for name, chosen in (("calib", calib), ("eval", evaluation)):
        np.savez_compressed(folder / f"{name}.npz", **minilm.encode(texts(chosen)))
        record[name] = [{**asdict(p), "tokens": [len(counter.encode(p.summary).ids), len(counter.encode(p.body).ids)]}
                        for p in chosen]
    (folder / "pairs.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    record = write()
    lengths = np.array([pair["tokens"] for pair in record["eval"]])
    print(f"Python {record['python']} standard library, corpus sha256 {record['corpus_sha256']}: "
          f"{record['corpus_pairs']} unique pairs; {len(record['calib'])} calibration and {len(record['eval'])} "
          f"evaluation pairs (disjoint modules). Evaluation tokens, median summary {np.median(lengths[:, 0]):.0f}, "
          f"body {np.median(lengths[:, 1]):.0f}; bodies over {minilm.SEQUENCE}: {np.mean(lengths[:, 1] > minilm.SEQUENCE):.0%}. "
          f"Wrote {OUT}")


if __name__ == "__main__":
    main()
