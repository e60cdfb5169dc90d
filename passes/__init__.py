"""The compiler back end: graph rewrites over onnx-graphsurgeon graphs, each driven by an explicit plan.

Installed as ``onnx_decomp_passes`` (the folder is ``passes/``). Knows nothing of statistics and never
imports ``onnx_decomp``.
"""

from .block_chains import KeepBlockLayout
from .block_rewrite import MIN_OPSET, BlockRewrite, Emission
from .conv_rewrite import ConvRewrite, conv_folding
from .builder import BlockBoundary, Builder
from .fold_permutation import FoldPermutation, Folding, plan_folding
from .head_region import HeadRegion, head_region
from .forms import CONV_FORMS, FORMS, Batched, BlockEinsum, Branches, Conv1x1, Form, LowRank, Transposed
from .infra import Pass, PassError, PassManager, PassResult
from .normalize import FoldBatchNorm, FoldConstantNodes, UniqueNodeNames, ZeroConvBias
from .features import FeatureSpace, feature_space, find_chains
from .ops import CONV, LINEAR, Layout, OutputBias, Skipped, WeightedOp, all_graphs, find_weighted_ops, one_node_graph
from .plan import BlockPlan, Branch, HeadsPlan, LowRankPlan, Plan, SlicePlan, plan_from_support
from .remove_heads import RemoveHeads
from .remove_units import RemoveUnits
from .site import Site

__all__ = [
    "Pass", "PassError", "PassManager", "PassResult",
    "Plan", "BlockPlan", "Branch", "HeadsPlan", "LowRankPlan", "SlicePlan", "plan_from_support", "Site",
    "Layout", "WeightedOp", "OutputBias", "Skipped", "LINEAR", "CONV", "all_graphs", "find_weighted_ops",
    "find_chains", "one_node_graph", "FeatureSpace", "feature_space",
    "Builder", "BlockBoundary", "Form", "Branches", "Batched", "BlockEinsum", "Conv1x1", "LowRank", "Transposed",
    "FORMS",
    "BlockRewrite", "Emission", "MIN_OPSET", "FoldPermutation", "Folding", "plan_folding", "KeepBlockLayout",
    "RemoveUnits", "RemoveHeads", "HeadRegion", "head_region", "ConvRewrite", "conv_folding", "CONV_FORMS",
    "FoldConstantNodes", "UniqueNodeNames", "FoldBatchNorm", "ZeroConvBias",
]
