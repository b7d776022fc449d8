"""One unlearning job (NPO, 2 steps) on a tiny Llama; run directly (1 process, batch 4) or by
torchrun (2 processes, batch 2 each: the same global batch). argv: DATA_DIR OUT_FILE BATCH."""

import sys
from pathlib import Path

import torch

from unlearnx.data.tofu import load_split
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.models import tiny_llama
from unlearnx.train.api import UnlearnConfig, unlearn

data_dir, out_file, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
# 4 forget examples: every step covers all of them, on 1 rank or split over 2, whatever the order
forget = [(r["question"], r["answer"]) for r in load_split(data_dir, "forget01")[:4]]
tok = build_word_tokenizer([q + " " + a for q, a in forget])
model = tiny_llama(len(tok), hidden=32, intermediate=64, layers=1, heads=2, max_positions=256, seed=0)
# NPO alone: a mean over sequences, so the mean of the ranks' gradients is the global one (a
# token-mean retain NLL would weigh ranks by their token counts)
config = UnlearnConfig(
    method="npo", retain="none", learning_rate=1e-2, max_steps=2, batch_size=batch, logging_steps=100
)
unlearn(model, tok, forget, None, config, out_file.parent / f"run-{batch}")
if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
    torch.save({k: v.detach() for k, v in model.state_dict().items()}, out_file)
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # a gloo group left to exit handlers can abort the process
