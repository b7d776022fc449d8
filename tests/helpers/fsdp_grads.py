"""FSDP2 (``fully_shard`` per decoder layer and at the root, as accelerate's transformer-based
wrap does) on gloo/CPU: one NPO forward/backward of a patched tiny Llama on the fused path.
Writes the loss and the full (gathered) gradients; without torchrun, the same job unsharded.
argv: OUT_FILE TIE (0 or 1)."""

import os
import sys

import torch
import torch.distributed as dist

from unlearnx import functional
from unlearnx.integrations.transformers import patch_causal_lm
from unlearnx.models import tiny_llama

out_file, tie = sys.argv[1], bool(int(sys.argv[2]))
sharded = "RANK" in os.environ  # launched by torchrun
model = tiny_llama(50, hidden=32, layers=2, heads=2, tie=tie, seed=0)
patch_causal_lm(model)
gen = torch.Generator().manual_seed(1)
ids = torch.randint(0, 50, (4, 12), generator=gen)
labels = ids.clone()
labels[:, :3] = -100
ref_sums = torch.randn(4, generator=gen, dtype=torch.float64) - 40.0
rows = slice(None)
if sharded:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # each rank takes half of the batch; NPO is a mean over sequences, so the mean of the ranks'
    # gradients (what FSDP's reduce-scatter computes) is the full batch's
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * 4 // world, (rank + 1) * 4 // world)


def loss_fn(hidden, weight, target, bias):
    return functional.npo_loss(hidden, weight, target, ref_sums[rows], beta=0.1, bias=bias)


out = model(
    input_ids=ids[rows], attention_mask=torch.ones_like(ids[rows]), labels=labels[rows], unlearnx_loss=loss_fn
)
out.loss.backward()
loss = out.loss.detach().clone()
grads = {}
for name, p in model.named_parameters():
    g = p.grad
    if hasattr(g, "full_tensor"):
        g = g.full_tensor()
    grads[name] = g.detach().clone()
if sharded:
    dist.all_reduce(loss)
    loss /= dist.get_world_size()
    sharded_types = sorted({type(p).__name__ for p in model.parameters()})
    if dist.get_rank() == 0:
        torch.save({"loss": loss, "grads": grads, "param_types": sharded_types}, out_file)
    dist.barrier()
    dist.destroy_process_group()
    # everything is written; about 1 exit in 15 here aborts in C++ teardown ("terminate called
    # without an active exception") after FSDP2 on gloo, so skip the interpreter's teardown
    sys.stdout.flush()
    os._exit(0)
else:
    torch.save({"loss": loss, "grads": grads, "param_types": ["Parameter"]}, out_file)
