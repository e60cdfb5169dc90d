"""The compiler back end: graph rewrites over onnx-graphsurgeon graphs, each driven by an explicit block plan.

Installed as ``onnx_decomp_passes`` (the folder is ``passes/``). Knows nothing of statistics and never
imports ``onnx_decomp``.
"""

from .block_chains import KeepBlockLayout
from .block_rewrite import MIN_OPSET, BlockRewrite
from .builder import Builder
from .forms import (ALL_FORMS, DEFAULT_FORMS, FORMS_BY_NAME, Batched, BlockEinsum, Branches, Form, GroupedConv,
                    Transposed)
from .fold_permutation import FoldPermutation, Folding, plan_folding
from .infra import Pass, PassError, PassManager, PassResult
from .normalize import FoldConstantNodes, UniqueNodeNames
from .ops import (CONV, LINEAR, Layout, OutputBias, Skipped, WeightedOp, all_graphs, find_chains, find_weighted_ops,
                  one_node_graph)
from .site import Site
from .plan import BlockPlan, Branch, plan_from_support

__all__ = [
    "Pass", "PassError", "PassManager", "PassResult",
    "BlockPlan", "Branch", "plan_from_support",
    "Layout", "WeightedOp", "OutputBias", "Skipped", "Site", "LINEAR", "CONV", "all_graphs", "find_weighted_ops",
    "find_chains", "one_node_graph",
    "Builder", "Form", "Branches", "Batched", "BlockEinsum", "GroupedConv", "Transposed", "DEFAULT_FORMS",
    "ALL_FORMS", "FORMS_BY_NAME", "BlockRewrite", "MIN_OPSET", "FoldPermutation", "Folding", "plan_folding",
    "KeepBlockLayout",
    "FoldConstantNodes", "UniqueNodeNames",
]
