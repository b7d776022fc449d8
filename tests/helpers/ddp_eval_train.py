"""Two-process (DDP, gloo, CPU) training with TofuEvalCallback; run by torchrun from a test.

argv: DATA_DIR OUT_DIR. Both ranks build the same tiny model and tokenizer from the data."""

import json
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from unlearnx.data.tofu import encode_qa, load_split
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.eval.callback import TofuEvalCallback
from unlearnx.models import tiny_llama

data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = load_split(data_dir, "forget01")[:8]
texts = [t for r in load_split(data_dir, "forget01_perturbed")[:2] for t in (r["question"], r["answer"])]
tok = build_word_tokenizer(texts + [r["question"] + " " + r["answer"] for r in rows])
model = tiny_llama(len(tok), hidden=32, intermediate=64, layers=1, heads=2, max_positions=256, seed=0)
enc = encode_qa(tok, [r["question"] for r in rows], [r["answer"] for r in rows])
data = [
    {"input_ids": i, "attention_mask": m, "labels": lab}
    for i, m, lab in zip(enc.input_ids, enc.attention_mask, enc.labels, strict=True)
]
cb = TofuEvalCallback(
    tok, data_dir, out / "eval", every_steps=2, forget_split="forget01", limit=2, max_new_tokens=2
)
args = TrainingArguments(
    output_dir=str(out / "run"),
    per_device_train_batch_size=2,
    max_steps=4,
    report_to=[],
    save_strategy="no",
    use_cpu=True,
    ddp_backend="gloo",
    logging_strategy="no",
)
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
trainer.train()
if trainer.is_world_process_zero():
    (out / "world_size.json").write_text(json.dumps({"world_size": trainer.args.world_size}))
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # a gloo group left to exit handlers can abort the process
