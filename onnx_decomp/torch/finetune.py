"""A small generic training loop that keeps block masks in force: the one loop for dense, block-masked and
structured modules.

Every batch from ``loader`` is a sequence ``(*inputs, target)``: the loss is ``loss_fn(model(*inputs),
target)``. The optimizer defaults to a fresh Adam (``lr``) over the model's parameters as they are now; a
``scheduler``, if given, steps after every optimizer step. Masked entries get zero gradient from the hooks
``apply_block_mask`` installed; when ``mask`` is given (a ``BlockMask``, or the ``AppliedStructure`` of
``apply_structure``, whose block masks it holds) it is also re-enforced after every optimizer step. The
factorised and sliced layers of a structured module are plain smaller ``nn.Linear`` layers: they train as
they are and keep their shapes. The model trains in train mode and is left in the mode it came in.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional, Union

import torch
from tqdm import tqdm

from onnx_decomp.torch.block_mask import BlockMask
from onnx_decomp.torch.structure import AppliedStructure

logger = logging.getLogger(__name__)


def finetune_under_mask(model: torch.nn.Module, loss_fn: Callable, loader: Iterable, epochs: int = 5,
                        optimizer: Optional[torch.optim.Optimizer] = None, lr: float = 1e-3,
                        mask: Optional[Union[BlockMask, AppliedStructure]] = None, scheduler=None) -> list[float]:
    """Train ``epochs`` passes over ``loader``; returns the mean training loss of each epoch."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    was_training = model.training
    model.train()
    history = []
    try:
        with tqdm(range(epochs), desc="fine-tune under mask", unit="epoch", disable=None) as bar:
            for epoch in bar:
                total, count = 0.0, 0
                for *inputs, target in loader:
                    optimizer.zero_grad()
                    loss = loss_fn(model(*inputs), target)
                    loss.backward()
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    if mask is not None:
                        mask.enforce()
                    total, count = total + float(loss.detach()), count + 1
                history.append(total / max(count, 1))
                bar.set_postfix(loss=f"{history[-1]:.4g}")
                logger.debug("epoch %d: mean loss %.6g", epoch + 1, history[-1])
    finally:
        model.train(was_training)
    return history
