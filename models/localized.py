"""The paper's localized scenario (design.md section 7): 8 input groups, every sample touches one.

    python models/localized.py       # writes models/localized/ (see models/common.py), blocked.onnx, groups.npz

Data: 512 inputs in 8 groups of 64, 64 outputs in 8 groups of 8. A sample picks a group g, draws its 64
inputs from N(0, 1) (all other inputs 0) and targets ``tanh(A_g x_g)`` on g's 8 outputs (``A_g`` a fixed
random 8x64 matrix, N(0, 4/64) entries; all other outputs 0). Input and output order are shuffled by fixed
permutations, so the groups are hidden. 16000 training samples, 2000 held out.

Model: 512 -> 1024 -> ReLU -> 64, PyTorch default init (recorded), Adam lr 1e-3, batch 128, 10 epochs, MSE.
Then the chain is cut into 8 balanced blocks by co-clustering ``W2 @ W1`` (``coclustered_plan``), the
recovered input and output groups are scored against the planted ones (adjusted Rand index), and the model
is fine-tuned 5 epochs under the block mask and exported as ``blocked.onnx``. ``groups.npz`` holds the
planted group of every input and output. Seeded, two CPU threads, under a minute.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from onnx_decomp.planning.coclustering import coclustered_plan
from onnx_decomp.torch import apply_block_mask, finetune_under_mask, record_init
from onnx_decomp_models.common import (HERE, Batches, components, deterministic, predict, run_onnx, save_data,
                                       save_model)

OUT = HERE / "localized"
SEED, GROUPS, D_IN, HIDDEN, D_OUT = 0, 8, 512, 1024, 64
TRAIN, HELD_OUT, EPOCHS, FINETUNE_EPOCHS = 16000, 2000, 10, 5


def make_task(rng: np.random.Generator, groups: int = GROUPS, group_in: int = D_IN // GROUPS,
              group_out: int = D_OUT // GROUPS):
    """A sampler ``n -> (x, y)`` (float32) and the planted group of every input and output: ``groups``
    groups of ``group_in`` inputs and ``group_out`` outputs, as the module docstring describes."""
    d_in, d_out = groups * group_in, groups * group_out
    teachers = rng.normal(0.0, 2.0 / np.sqrt(group_in), (groups, group_out, group_in))
    in_order, out_order = rng.permutation(d_in), rng.permutation(d_out)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        chosen, rows = rng.integers(groups, size=n), np.arange(n)
        x = np.zeros((n, groups, group_in))
        y = np.zeros((n, groups, group_out))
        x[rows, chosen] = rng.normal(size=(n, group_in))
        y[rows, chosen] = np.tanh(np.einsum("noi,ni->no", teachers[chosen], x[rows, chosen]))
        return (x.reshape(n, d_in)[:, in_order].astype(np.float32),
                y.reshape(n, d_out)[:, out_order].astype(np.float32))

    return sample, (np.arange(d_in) // group_in)[in_order], (np.arange(d_out) // group_out)[out_order]


def main() -> None:
    deterministic(SEED)
    sample, input_group, output_group = make_task(np.random.default_rng(SEED))
    x_train, y_train = sample(TRAIN)
    x_test, y_test = sample(HELD_OUT)
    model = torch.nn.Sequential(torch.nn.Linear(D_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, D_OUT))
    init = record_init(model)
    batches = Batches(x_train, y_train, 128)
    loss = torch.nn.functional.mse_loss
    finetune_under_mask(model, loss, batches, epochs=EPOCHS)  # no mask: dense training

    def mse(net) -> float:
        return float(((predict(net, x_test) - y_test) ** 2).mean())

    dense_mse = mse(model)
    save_data(OUT, "input", x_test, "output", y_test)
    np.savez_compressed(OUT / "groups.npz", input=input_group, output=output_group)
    dense_path = save_model(OUT, "model.onnx", model, init, x_test[:2], "input", "output")

    blocked = copy.deepcopy(model)
    plan1, plan2 = coclustered_plan(model[0].weight.detach().numpy(), model[2].weight.detach().numpy(),
                                    GROUPS, seed=SEED)
    found_in, found_out = np.zeros(D_IN, np.int64), np.zeros(D_OUT, np.int64)
    for block, branch in enumerate(plan1.branches):
        found_in[branch.cols] = block
    for block, branch in enumerate(plan2.branches):
        found_out[branch.rows] = block
    mask = apply_block_mask(blocked, {"0.weight": plan1, "2.weight": plan2})
    cut_mse = mse(blocked)
    finetune_under_mask(blocked, loss, batches, epochs=FINETUNE_EPOCHS, mask=mask)
    tuned_mse = mse(blocked)
    blocked_path = save_model(OUT, "blocked.onnx", blocked, init, x_test[:2], "input", "output")

    onnx_mse = [float(((run_onnx(p, {"input": x_test}) - y_test) ** 2).mean()) for p in (dense_path, blocked_path)]
    print(f"localized {D_IN}-{HIDDEN}-{D_OUT}, {GROUPS} planted groups, held-out MSE ({HELD_OUT} samples, "
          f"target variance {y_test.var():.4f}):")
    print(f"  dense {dense_mse:.4f} | cut into {GROUPS} blocks {cut_mse:.4f} | "
          f"fine-tuned {FINETUNE_EPOCHS} epochs {tuned_mse:.4f}")
    print(f"  co-clustering W2 @ W1: ARI inputs {adjusted_rand_score(input_group, found_in):.3f}, "
          f"outputs {adjusted_rand_score(output_group, found_out):.3f}; blocks [hidden x in] "
          f"{sorted({(len(b.rows), len(b.cols)) for b in plan1.branches})}, [out x hidden] "
          f"{sorted({(len(b.rows), len(b.cols)) for b in plan2.branches})}")
    print(f"  ONNX Runtime MSE: model.onnx {onnx_mse[0]:.4f}, blocked.onnx {onnx_mse[1]:.4f}")
    print(f"  blocked.onnx components: 0.weight {components(blocked_path, '0.weight')}, "
          f"2.weight {components(blocked_path, '2.weight')}; wrote {OUT}")


if __name__ == "__main__":
    main()
