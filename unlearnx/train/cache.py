"""Reference cache: what unlearning methods need from the original model, computed once.

One no-grad pass of the original model over a dataset stores, per example:
- ``seq_logp``: summed answer log-prob (NPO's ``S_ref``), through the fused forward-only path;
- ``hidden``: the final hidden states at every position (KL retain, DiPO, DTO compute the
  reference logits per chunk from them and ``head_weight`` / ``head_bias``, the original head);
- ``dto_mask``: DTO's target tokens (:func:`unlearnx.functional.dto_target_mask`).
Training then holds one model. The cache saves and loads with ``torch.save``/``torch.load``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from unlearnx import functional
from unlearnx.integrations.transformers import hidden_states
from unlearnx.train.data import QADataset, pad

ITEMS = ("seq_logp", "hidden", "dto_mask")


@dataclass
class ReferenceCache:
    seq_logp: Tensor | None = None  # (n,) fp32
    hidden: list[Tensor] | None = None  # n x (T_i, D), model dtype
    dto_mask: list[Tensor] | None = None  # n x (T_i,) bool, over label positions
    head_weight: Tensor | None = None  # (V, D)
    head_bias: Tensor | None = None  # (V,)
    options: dict = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model,
        dataset: QADataset,
        needs: set[str],
        *,
        batch_size: int = 8,
        pad_id: int = 0,
        dto_options: dict | None = None,
        full_width: bool = False,
    ) -> ReferenceCache:
        """One pass of ``model`` over ``dataset`` storing the ``needs`` (a subset of ITEMS).
        ``full_width``: every example right-padded to the dataset's longest and its hidden
        states kept at every position, padding included (OU's KL covers a batch's padded
        positions; with causal attention and padding masked, the state at a padded position
        does not depend on how wide the batch is)."""
        unknown = set(needs) - set(ITEMS)
        if unknown:
            raise ValueError(f"needs: unknown cache items {sorted(unknown)}; expected a subset of {ITEMS}")
        device = next(model.parameters()).device
        head = model.get_output_embeddings()
        weight, bias = head.weight.detach(), getattr(head, "bias", None)
        keep_hidden = bool({"hidden", "dto_mask"} & set(needs))
        logps, hiddens, masks = [], [], []
        was_training = model.training
        model.eval()
        width = max(int(dataset[i]["input_ids"].numel()) for i in range(len(dataset))) if full_width else None
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            b = {k: v.to(device) for k, v in pad(items, pad_id, width).items()}
            h = hidden_states(model, b["input_ids"], b["attention_mask"])
            target = b["labels"][:, 1:]
            if "seq_logp" in needs:
                s, _ = functional.sequence_logprobs(h[:, :-1], weight, target, bias=bias)
                logps.append(s.float().cpu())
            lengths = [width or it["input_ids"].numel() for it in items]
            if keep_hidden:
                hiddens += [h[i, :n].cpu() for i, n in enumerate(lengths)]
            if "dto_mask" in needs:
                m = functional.dto_target_mask(
                    h[:, :-1], weight, target, ref_bias=bias, **(dto_options or {})
                )
                # stored over label positions (index 0 = the first token, never a target)
                full = torch.cat([torch.zeros_like(m[:, :1]), m], dim=1)
                masks += [full[i, :n].cpu() for i, n in enumerate(lengths)]
        model.train(was_training)
        return cls(
            seq_logp=torch.cat(logps) if "seq_logp" in needs else None,
            hidden=hiddens if "hidden" in needs else None,
            dto_mask=masks if "dto_mask" in needs else None,
            head_weight=weight.cpu().clone() if "hidden" in needs else None,
            head_bias=None if bias is None or "hidden" not in needs else bias.detach().cpu().clone(),
            options={"needs": sorted(needs), "dto": dto_options or {}, "full_width": full_width},
        )

    def nbytes(self) -> int:
        """Bytes held, for comparison with keeping a second model."""
        tensors = [
            self.seq_logp,
            self.head_weight,
            self.head_bias,
            *(self.hidden or []),
            *(self.dto_mask or []),
        ]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def batch(self, index: Tensor, width: int, device: torch.device) -> dict[str, Tensor]:
        """Cache entries of examples ``index`` right-padded to ``width`` positions."""
        out: dict[str, Tensor] = {}
        idx = index.tolist()
        if self.seq_logp is not None:
            out["seq_logp"] = self.seq_logp[idx].to(device)
        if self.hidden is not None:
            rows = [self.hidden[i] for i in idx]
            h = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
            for r, x in enumerate(rows):
                n = min(x.shape[0], width)  # a full-width entry is cut to the batch's width
                h[r, :n] = x[:n]
            out["hidden"] = h.to(device)
            out["head_weight"] = self.head_weight.to(device)
            if self.head_bias is not None:
                out["head_bias"] = self.head_bias.to(device)
        if self.dto_mask is not None:
            m = torch.zeros(len(idx), width, dtype=torch.bool)
            for r, i in enumerate(idx):
                n = min(self.dto_mask[i].numel(), width)
                m[r, :n] = self.dto_mask[i][:n]
            out["dto_mask"] = m.to(device)
        return out

    def save(self, path: str | Path) -> None:
        """Atomic: written to a temporary file, then renamed."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.__dict__, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceCache:
        return cls(**torch.load(path, weights_only=True))
