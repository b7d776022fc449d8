"""One unlearning job (NPO, 2 steps) on a tiny Llama; run by torchrun with 1 process and batch 4
or 2 processes and batch 2 each (the same global batch). The final model is saved by
``unlearn(save_to=OUT_DIR/model)``, which the main process alone writes.
argv: DATA_DIR OUT_DIR BATCH [fsdp] (fsdp: ask for FSDP, which accelerate cannot give on CPU)."""

import sys
from pathlib import Path

import torch

from unlearnx.data.tofu import load_split
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.models import tiny_llama
from unlearnx.train.api import CONSTANT_SCHEDULE, UnlearnConfig, unlearn

data_dir, out_dir, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
# 4 forget examples: every step covers all of them, on 1 rank or split over 2, whatever the order
forget = [(r["question"], r["answer"]) for r in load_split(data_dir, "forget01")[:4]]
tok = build_word_tokenizer([q + " " + a for q, a in forget])
model = tiny_llama(len(tok), hidden=32, intermediate=64, layers=1, heads=2, max_positions=256, seed=0)
# NPO alone: a mean over sequences, so the mean of the ranks' gradients is the global one (a
# token-mean retain NLL would weigh ranks by their token counts)
config = UnlearnConfig(
    **CONSTANT_SCHEDULE,
    method="npo",
    retain="none",
    learning_rate=1e-2,
    max_steps=2,
    batch_size=batch,
    logging_steps=100,
    fsdp=sys.argv[4:] == ["fsdp"],
)
unlearn(model, tok, forget, None, config, out_dir / "run", save_to=out_dir / "model")
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # a gloo group left to exit handlers can abort the process
