"""``unlearnx demo``: a real pretrained chat model forgets facts it knows, with every method.

1. Loads SmolLM2-135M-Instruct (bundled, offline; :func:`unlearnx.models.smollm2`) and asks it
   every question of :data:`unlearnx.data.facts.FACTS` through its chat template. A fact is
   *known* when the greedy answer names it (:func:`~unlearnx.data.facts.knows`); only known
   facts are used.
2. The known facts of one topic (capitals) are the forget set; the other known facts are the
   retain side, of which every second one is trained on (the retain term) and the rest are
   never seen in training (``retain_unseen_acc`` in the report).
3. Each method unlearns from a fresh copy of the model, and is measured: ``forget_acc`` /
   ``retain_acc`` (share of greedy answers that still name the fact), ``forget_prob`` /
   ``retain_prob`` (TOFU's answer probability of the trained sentence), ``ppl`` (perplexity on
   :data:`~unlearnx.data.facts.HELDOUT_TEXT`, everyday prose: general utility), wall
   ``seconds`` and ``peak_mb`` (resident peak above the start).
4. Prints a table and before/after answers, writes ``OUT/report.json`` and
   ``OUT/tradeoff.png``.

``unlearnx demo --quick`` runs the tiny from-scratch demo instead (:mod:`unlearnx.demo`).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from unlearnx.data.facts import FACTS, HELDOUT_TEXT, TOPICS, knows
from unlearnx.eval import metrics, report, tofu
from unlearnx.models import load_pretrained
from unlearnx.profiling import peak_extra_mb
from unlearnx.train.api import CONSTANT_SCHEDULE, UnlearnConfig, unlearn
from unlearnx.train.methods import METHODS

# Per-method settings on SmolLM2 (learning rate; 2 epochs over the forget set, batch 8, on a
# constant schedule), chosen by hand on this demo's facts on a 2-core AVX2 CPU (docs/demo.md has
# the runs). Two epochs keep the seven methods within 10 minutes there. Where a rate forgot but
# lost retain accuracy it was lowered (GradDiff 5e-5 -> 1e-5, DTO 3e-5 -> 1e-5); where it
# forgot little it was raised (SimNPO and DiPO 5e-5 -> 1e-4). PDU starts its dual high, as the
# authors' alpha = 100, and updates it from the first step (OU's 5 warm-up epochs would leave it
# at its start for the whole run); DTO gets an NLL retain term (its own default has none).
REAL_METHOD_SETTINGS: dict[str, dict] = {
    "ga": {"learning_rate": 5e-5},
    "grad_diff": {"learning_rate": 1e-5},
    "npo": {"learning_rate": 5e-5},
    "simnpo": {"learning_rate": 1e-4},
    "dipo": {"learning_rate": 1e-4},
    "pdu": {
        "learning_rate": 3e-5,
        "hparams": {"alpha": 100.0, "dual_step_size": 5.0, "dual_warmup_epochs": 0},
    },
    "dto": {"learning_rate": 1e-5, "retain": "nll"},
}
EPOCHS = 2.0

MIN_FACTS = 4
"""Known facts needed on each side; fewer is an error that names the model."""


@dataclass
class RealDemoConfig:
    out: Path = Path("demo-out")
    model: str = "smollm2"
    forget_topic: str = "capitals"
    methods: tuple[str, ...] = tuple(METHODS)
    method_settings: dict = field(default_factory=lambda: copy.deepcopy(REAL_METHOD_SETTINGS))
    batch_size: int = 8
    max_new_tokens: int = 24
    seed: int = 0


def measure(model, tok, facts: list[dict], max_new_tokens: int) -> list[dict]:
    """Per fact: ``generation`` (greedy), ``correct`` (it names the fact) and ``prob``."""
    # one batch: the prompts are of similar length, and larger batches generate faster on a CPU
    rows = tofu.evaluate_split(model, tok, facts, "answer", batch_size=64, max_new_tokens=max_new_tokens)
    return [
        {
            "question": f["question"],
            "generation": r["generation"],
            "prob": r["prob"],
            "correct": knows(r["generation"], f["keys"]),
        }
        for f, r in zip(facts, rows, strict=True)
    ]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def score(
    model, tok, sides: dict[str, list[dict]], max_new_tokens: int, measured: dict | None = None
) -> dict:
    """The table's numbers for one model: accuracy and probability per side, perplexity.
    ``measured``: :func:`measure` rows by question, already taken of this model."""
    model.eval()
    if measured is None:
        facts = [f for side in sides.values() for f in side]
        measured = {e["question"]: e for e in measure(model, tok, facts, max_new_tokens)}
    per = {name: [measured[f["question"]] for f in facts] for name, facts in sides.items()}
    retain = per["retain_trained"] + per["retain_unseen"]
    return {
        "forget_acc": _mean(e["correct"] for e in per["forget"]),
        "forget_prob": _mean(e["prob"] for e in per["forget"]),
        "retain_acc": _mean(e["correct"] for e in retain),
        "retain_prob": _mean(e["prob"] for e in retain),
        "retain_unseen_acc": _mean(e["correct"] for e in per["retain_unseen"]),
        "ppl": metrics.perplexity(model, tok, HELDOUT_TEXT),
        "answers": per,
    }


def split_facts(known: list[dict], topic: str) -> dict[str, list[dict]]:
    """``forget`` (the topic's known facts), ``retain_trained`` (every second other known
    fact) and ``retain_unseen`` (the rest)."""
    others = [f for f in known if f["topic"] != topic]
    return {
        "forget": [f for f in known if f["topic"] == topic],
        "retain_trained": others[::2],
        "retain_unseen": others[1::2],
    }


def _pairs(facts: list[dict]) -> list[tuple[str, str]]:
    return [(f["question"], f["answer"]) for f in facts]


def run(cfg: RealDemoConfig, log: Callable[[str], None] = print) -> dict:
    """The whole demo; returns the report (also written to ``cfg.out/report.json``)."""
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods: unknown {sorted(unknown)}; choose from {sorted(METHODS)}")
    if cfg.forget_topic not in TOPICS:
        raise ValueError(f"forget_topic: expected one of {TOPICS}, got {cfg.forget_topic!r}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tok = load_pretrained(cfg.model)
    log(f"loaded {cfg.model} in {time.perf_counter() - t0:.0f} s; asking it {len(FACTS)} questions")
    probe = measure(model.eval(), tok, FACTS, cfg.max_new_tokens)
    known = [f for f, e in zip(FACTS, probe, strict=True) if e["correct"]]
    sides = split_facts(known, cfg.forget_topic)
    need = {"forget": MIN_FACTS, "retain_trained": MIN_FACTS // 2, "retain_unseen": MIN_FACTS // 2}
    short = {k: len(v) for k, v in sides.items() if len(v) < need[k]}
    if short:
        raise ValueError(f"model: {cfg.model} knows too few demo facts: {short} (needs {need})")
    log(
        f"it knows {len(known)} of {len(FACTS)}: forgetting {len(sides['forget'])} "
        f"({cfg.forget_topic}), keeping {len(known) - len(sides['forget'])} "
        f"({len(sides['retain_trained'])} of them in the retain term)"
    )
    rep: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "probe": probe,
        "sides": {k: [f["question"] for f in v] for k, v in sides.items()},
        "target": score(model, tok, sides, cfg.max_new_tokens, {e["question"]: e for e in probe}),
        "methods": {},
    }
    for method in cfg.methods:
        settings = dict(cfg.method_settings.get(method, {}))
        ucfg = UnlearnConfig(
            method=method,
            hparams=settings.pop("hparams", {}),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            logging_steps=1,
            report_examples=0,
            **{**CONSTANT_SCHEDULE, "epochs": EPOCHS, **settings},
        )
        unlearned = copy.deepcopy(model).train()
        result: dict = {}

        def job(m=unlearned, ucfg=ucfg, method=method, result=result) -> None:
            forget, retain = _pairs(sides["forget"]), _pairs(sides["retain_trained"])
            result.update(unlearn(m, tok, forget, retain, ucfg, cfg.out / "runs" / method))

        t0 = time.perf_counter()
        peak = peak_extra_mb(job, torch.device("cpu"))
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        entry = score(unlearned, tok, sides, cfg.max_new_tokens)
        entry.update(seconds=seconds, peak_mb=peak, steps=result["steps"])
        entry["score_seconds"] = time.perf_counter() - t0
        rep["methods"][method] = entry
        log(
            f"{method:<10} forget_acc {entry['forget_acc']:.2f}  retain_acc {entry['retain_acc']:.2f}  "
            f"ppl {entry['ppl']:.1f}  ({seconds:.0f} s unlearning, {entry['score_seconds']:.0f} s measuring)"
        )
        del unlearned
    rep["acceptance"] = acceptance(rep)
    (cfg.out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    runs = {"original": rep["target"], **rep["methods"]}
    report.plot_tradeoff(
        runs,
        cfg.out / "tradeoff.png",
        utility="retain_acc",
        forget="forget_prob",
        forget_label="forget answer probability",
    )
    return rep


def acceptance(rep: dict) -> dict:
    """Per method but ``ga``: greedy forget accuracy at most half the original's, retain
    accuracy at least 80% of it. (``forget_prob`` is reported, not judged: it is the mean over
    the whole sentence, most of which, "The capital of France is", methods that aim at the
    answer's key tokens, DTO's targets or SimNPO's length-normalised margin, rightly keep.)"""
    t = rep["target"]
    return {
        m: {
            "forget_acc_halved": e["forget_acc"] <= 0.5 * t["forget_acc"],
            "retain_acc_kept_80pct": e["retain_acc"] >= 0.8 * t["retain_acc"],
        }
        for m, e in rep["methods"].items()
        if m != "ga"
    }


def table(rep: dict) -> str:
    cols = ("forget_acc", "forget_prob", "retain_acc", "retain_prob", "ppl")
    lines = [f"{'model':<10}" + "".join(f"{c:>12}" for c in cols) + f"{'seconds':>9}{'peak_mb':>9}"]
    for name, e in (("original", rep["target"]), *rep["methods"].items()):
        cells = "".join(f"{e[c]:12.4f}" if c != "ppl" else f"{e[c]:12.2f}" for c in cols)
        lines.append(f"{name:<10}{cells}{e.get('seconds', 0):9.1f}{e.get('peak_mb', 0):9.0f}")
    return "\n".join(lines)


def answers(rep: dict, shown: int) -> str:
    """Greedy answers to the first ``shown`` forget and retain questions, before and after."""
    out = []
    for side in ("forget", "retain_trained", "retain_unseen"):
        for i in range(min(shown if side == "forget" else 1, len(rep["target"]["answers"][side]))):
            out.append(f"Q ({side.split('_')[0]}): {rep['target']['answers'][side][i]['question']}")
            for name, e in (("original", rep["target"]), *rep["methods"].items()):
                text = " ".join(e["answers"][side][i]["generation"].split())
                out.append(f"  {name:<10} {text[:90]}")
    return "\n".join(out)
