"""Sequential unlearning: a series of forget requests, each unlearned from the previous result
(MUSE's sustainability), or growing forget sets (its scalability), with the forget and retain
metrics measured after every request.

After request ``k`` the model is measured on every request's forget set (those still to come
too: it shows what an earlier request already took with it) and on the retain set, with
TOFU's answer probability (:func:`~unlearnx.train.api.answer_report`), and, given an
``evaluate`` function, with a benchmark (MUSE's or TOFU's metrics,
:func:`unlearnx.eval.callback.benchmark_evaluator`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch.utils.data import ConcatDataset

from unlearnx.data import template
from unlearnx.train.api import UnlearnConfig, _dataset, answer_report, unlearn

MODES = ("sequential", "growing")
REFERENCES = ("current", "original")


def unlearn_requests(
    model,
    tokenizer,
    requests: list,
    retain,
    config: UnlearnConfig,
    out_dir: str | Path,
    *,
    mode: str = "sequential",
    reference: str = "current",
    limit: int | None = None,
    evaluate: Callable[[object], Mapping] | None = None,
) -> dict:
    """Runs ``config`` on each request in turn, on ``model`` (trained in place).

    ``requests``: forget sets (QA pairs or datasets). ``mode``: ``sequential`` unlearns request
    ``k`` alone, ``growing`` requests ``1..k`` together, each time from the previous result.
    ``reference``: the reference cache (NPO's, DiPO's, ...) is rebuilt per request from the
    ``current`` model, as the papers do, or from the ``original`` one (a frozen copy is kept).
    ``limit``: examples measured per set (default all). ``evaluate``: ``model -> summary``, run
    before the first request and after each (its numbers under ``"benchmark"``, flattened).
    Writes ``out_dir/request-<k>/``. Returns ``{"history": [{"request": k, "steps", "forget":
    [report per request], "retain": report or None[, "benchmark": {key: value}]}]}``; entry 0 is
    the model before any request."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference: expected one of {REFERENCES}, got {reference!r}")
    if not requests:
        raise ValueError("requests: the list of forget sets is empty")
    sets = [_dataset(tokenizer, r, config.max_length, config.template) for r in requests]
    retain_set = (
        _dataset(tokenizer, retain, config.max_length, config.template) if retain is not None else None
    )
    pad_id = template.pad_id(tokenizer)
    original = copy.deepcopy(model).eval() if reference == "original" else None

    def report(dataset) -> dict:
        return answer_report(model, dataset, pad_id, len(dataset) if limit is None else limit)

    def measure(k: int, steps: int) -> dict:
        model.eval()
        record = {
            "request": k,
            "steps": steps,
            "forget": [report(s) for s in sets],
            "retain": None if retain_set is None else report(retain_set),
        }
        if evaluate is not None:
            from unlearnx.eval.callback import flatten_summary

            record["benchmark"] = flatten_summary(evaluate(model))
        return record

    history = [measure(0, 0)]
    for k in range(1, len(sets) + 1):
        forget = sets[k - 1] if mode == "sequential" else ConcatDataset(sets[:k])
        result = unlearn(
            model,
            tokenizer,
            forget,
            retain_set,
            config,
            Path(out_dir) / f"request-{k}",
            reference_model=original,
        )
        history.append(measure(k, result["steps"]))
    return {"mode": mode, "reference": reference, "history": history}


def requests_table(result: dict) -> str:
    """Markdown: after each request, every request's forget probability and the retain one; then
    the benchmark's metrics (one row each) if it was evaluated."""
    n = len(result["history"][0]["forget"])
    lines = [
        "| after request | steps | "
        + " | ".join(f"forget {j + 1} prob" for j in range(n))
        + " | retain prob |",
        "|---|---|" + "---|" * (n + 1),
    ]
    for h in result["history"]:
        retain = "" if h["retain"] is None else f"{h['retain']['prob']:.4f}"
        cells = " | ".join(f"{f['prob']:.4f}" for f in h["forget"])
        lines.append(f"| {h['request'] or 'none'} | {h['steps']} | {cells} | {retain} |")
    if "benchmark" in result["history"][0]:
        history = result["history"]
        lines += ["", "| metric | " + " | ".join(f"after {h['request'] or 'none'}" for h in history) + " |"]
        lines.append("|---|" + "---|" * len(history))
        for key in history[0]["benchmark"]:
            lines.append(f"| {key} | " + " | ".join(f"{h['benchmark'][key]:.4g}" for h in history) + " |")
    return "\n".join(lines) + "\n"


def plot_requests(result: dict, path: str | Path, benchmark_keys: Sequence[str] = ()) -> Path:
    """Forget probability of each request and the retain probability against requests done; a
    second panel with the benchmark's ``benchmark_keys`` where it was evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = result["history"]
    xs = [h["request"] for h in history]
    keys = [k for k in benchmark_keys if k in history[0].get("benchmark", {})]
    fig, axes = plt.subplots(1, 2 if keys else 1, figsize=(11 if keys else 5.5, 3.8), squeeze=False)
    ax = axes[0, 0]
    for j in range(len(result["history"][0]["forget"])):
        ax.plot(xs, [h["forget"][j]["prob"] for h in result["history"]], "o-", label=f"forget {j + 1}")
    if result["history"][0]["retain"] is not None:
        ax.plot(xs, [h["retain"]["prob"] for h in result["history"]], "s--", color="k", label="retain")
    ax.set_xlabel("requests unlearned")
    ax.set_ylabel("answer prob")
    ax.set_title(f"{result['mode']} requests (reference: {result['reference']})")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    if keys:
        bx = axes[0, 1]
        for key in keys:
            bx.plot(xs, [h["benchmark"][key] for h in history], "o-", label=key)
        bx.set_xlabel("requests unlearned")
        bx.set_title("benchmark")
        bx.set_xticks(xs)
        bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
