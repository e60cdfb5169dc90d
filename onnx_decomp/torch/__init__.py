"""The PyTorch side: record the initialization, export with it, train under a block mask, take on the
structure annealing found.

    from onnx_decomp.torch import record_init, export, apply_block_mask, apply_structure, finetune_under_mask

    init = record_init(model, overrides={"encoder.*.weight": "normal(sigma=0.02)"})
    ...train...
    export(model, (x,), "model.onnx", init, reference_path="init.onnx")
    mask = apply_block_mask(model, {"fc2.weight": plan})       # plan: onnx_decomp_passes.BlockPlan
    finetune_under_mask(model, torch.nn.functional.cross_entropy, loader, mask=mask)

    _, report = onnx_decomp.anneal("model.onnx", calib)         # or: what annealing found (any family)
    structure = apply_structure(model, report, onnx_model="model.onnx")
    finetune_under_mask(model, torch.nn.functional.cross_entropy, loader, mask=structure)

The only part of the package that imports torch (install the ``torch`` extra).
"""

from __future__ import annotations

from onnx_decomp.torch.binding import Binding, bind_initializers, load_initializers
from onnx_decomp.torch.block_mask import BlockMask, apply_block_mask
from onnx_decomp.torch.export import Exported, export
from onnx_decomp.torch.finetune import finetune_under_mask
from onnx_decomp.torch.init_record import InitRecord, record_init
from onnx_decomp.torch.low_rank import factorize, rank_for_macs
from onnx_decomp.torch.pruning import prune_structured
from onnx_decomp.torch.structure import AppliedStructure, apply_structure

__all__ = ["record_init", "InitRecord", "export", "Exported", "apply_block_mask", "BlockMask",
           "finetune_under_mask", "bind_initializers", "Binding", "load_initializers", "factorize",
           "rank_for_macs", "prune_structured", "apply_structure", "AppliedStructure"]
