"""The layering the README's Architecture section promises, checked on the source itself.

Rules (imports read with ``ast``; imports under ``if TYPE_CHECKING:`` do not run and do not count):
- the back end (``passes/``, installed as ``onnx_decomp_passes``) never imports ``onnx_decomp``;
- in the shipped packages, only ``onnx_decomp/torch/`` imports torch;
- in the shipped packages, only the back end and model I/O (``onnx_decomp/io/``) import onnx-graphsurgeon;
- inside ``onnx_decomp`` a module imports only from its own layer or the layers below (``LAYERS``, the
  README's direction of imports; the package's ``__init__`` is the public facade over all of them), and so
  inside the search (``SEARCH_LAYERS``: the structure families sit between the network and the schedule);
- nothing anywhere imports the back end by its folder name ``passes``;
- every package folder is installed (pyproject's package list), and no module exceeds ``MAX_LINES``.
The checker is tested on a tree with planted violations, so a rule that stops firing fails too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).parents[1]
SHIPPED = ("passes", "onnx_decomp")
MAX_LINES = 400
LAYERS = (  # onnx_decomp's modules and subpackages, lowest first
    ("errors", "config", "io"),
    ("context", "decisions"),
    ("cost", "runtime"),
    ("report",),
    ("stats",),
    ("planning",),
    ("search",),
    ("distributed",),
    ("drivers", "torch"),
    ("cli",),
)
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}
SEARCH_LAYERS = (  # onnx_decomp/search inside, lowest first: the families plan on the network, the schedule runs them
    ("calibration", "data_checks", "on_disk", "evidence", "patches", "network", "products", "importance", "refit",
     "fidelity", "blocks"),
    ("families",),
    ("schedule", "stability"),
)
SEARCH_LAYER = {name: level for level, names in enumerate(SEARCH_LAYERS) for name in names}


def _imports(tree: ast.AST) -> set[str]:
    """Dotted names of the absolute imports in ``tree``, outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)  # the body runs under a type checker only
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        stack.extend(ast.iter_child_nodes(node))
    return found


def _under(relative: Path, folder: str) -> bool:
    return relative.parts[:len(Path(folder).parts)] == Path(folder).parts


def violations(root: Path) -> list[str]:
    """Every broken layering rule under ``root``, as ``path: rule`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0].startswith("."):
            continue
        dotted = _imports(ast.parse(path.read_text()))
        imports = {name.split(".")[0] for name in dotted}
        if "passes" in imports:
            found.append(f"{relative}: imports the back end as 'passes' (use onnx_decomp_passes)")
        if relative.parts[0] not in SHIPPED:
            continue
        if _under(relative, "passes") and imports & {"onnx_decomp", "onnx_decomp_models"}:
            found.append(f"{relative}: the back end imports the front end")
        if "torch" in imports and not _under(relative, "onnx_decomp/torch"):
            found.append(f"{relative}: imports torch outside onnx_decomp/torch")
        if "onnx_graphsurgeon" in imports and not (_under(relative, "passes") or _under(relative, "onnx_decomp/io")):
            found.append(f"{relative}: imports onnx_graphsurgeon outside the back end and model I/O")
        if relative.parts[0] == "onnx_decomp" and relative.parts[1] != "__init__.py":
            own = LAYER.get(Path(relative.parts[1]).stem)
            if own is None:
                found.append(f"{relative}: in no layer (add it to LAYERS and the README's architecture)")
            for name in sorted(dotted) if own is not None else ():
                parts = name.split(".")
                if parts[0] == "onnx_decomp" and len(parts) > 1 and LAYER.get(parts[1], -1) > own:
                    found.append(f"{relative}: imports {name} from a higher layer")
        if _under(relative, "onnx_decomp/search") and len(relative.parts) > 2:
            own = SEARCH_LAYER.get(Path(relative.parts[2]).stem)
            if own is None and relative.parts[2] != "__init__.py":
                found.append(f"{relative}: in no layer of the search (add it to SEARCH_LAYERS)")
            for name in sorted(dotted) if own is not None else ():
                parts = name.split(".")
                if parts[:2] == ["onnx_decomp", "search"] and SEARCH_LAYER.get(parts[2], -1) > own:
                    found.append(f"{relative}: imports {name} from a higher layer of the search")
    return found


def test_the_project_keeps_its_layering():
    assert violations(ROOT) == []


def test_the_checker_finds_planted_violations(tmp_path):
    files = {
        "passes/bad.py": "import onnx_decomp\n",
        "passes/fine.py": "from .ops import WeightedOp\nimport onnx_graphsurgeon as gs\n",
        "onnx_decomp/context.py": "def f():\n    import onnx_graphsurgeon\n",
        "onnx_decomp/io/fine.py": "import onnx_graphsurgeon as gs\n",
        "onnx_decomp/stats/trainer.py": "from torch import nn\n",
        "onnx_decomp/torch/fine.py": "import torch\n",
        "onnx_decomp/misc.py": "import numpy\n",
        "onnx_decomp/decisions.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import onnx_graphsurgeon as gs\n",
        "onnx_decomp/report/upward.py": "from onnx_decomp.drivers.decompose import decompose\n",
        "onnx_decomp/stats/downward.py": "from onnx_decomp.report.table import table\nfrom onnx_decomp import io\n",
        "tests/old_style.py": "from passes.plan import BlockPlan\n",
        "tools/fine.py": "import torch\nimport onnx_graphsurgeon\n",
        "onnx_decomp/search/refit.py": "from onnx_decomp.search.schedule import Annealer\n",
        "onnx_decomp/search/families/fine.py": "from onnx_decomp.search.network import Layer\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "onnx_decomp/context.py: imports onnx_graphsurgeon outside the back end and model I/O",
        "onnx_decomp/misc.py: in no layer (add it to LAYERS and the README's architecture)",
        "onnx_decomp/report/upward.py: imports onnx_decomp.drivers.decompose.decompose from a higher layer",
        "onnx_decomp/search/refit.py: imports onnx_decomp.search.schedule.Annealer from a higher layer of the search",
        "onnx_decomp/stats/trainer.py: imports torch outside onnx_decomp/torch",
        "passes/bad.py: the back end imports the front end",
        "tests/old_style.py: imports the back end as 'passes' (use onnx_decomp_passes)",
    ]


def test_every_package_folder_is_installed_under_its_import_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    renamed = {folder: name for name, folder in setuptools["package-dir"].items()}
    folders = sorted({p.parent.relative_to(ROOT) for p in ROOT.rglob("__init__.py")
                      if p.relative_to(ROOT).parts[0] in (*SHIPPED, "models")})
    expected = {".".join((renamed.get(f.parts[0], f.parts[0]), *f.parts[1:])) for f in folders}
    assert set(setuptools["packages"]) == expected


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for folder in (*SHIPPED, "models", "tools") for p in (ROOT / folder).rglob("*.py")}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}
