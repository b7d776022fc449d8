"""``unlearnx demo``: a full finetune -> unlearn -> evaluate cycle on a CPU, no downloads.

1. Generates the synthetic fictitious-author benchmark (``unlearnx.data.synthetic``) and a
   word-level tokenizer for it.
2. Trains a tiny Llama-architecture model from scratch on everything (the *target*) and
   another on everything but the forget authors (the *retain model*, the gold standard), each
   fact in both phrasings (``DemoConfig.paraphrase_training``).
3. Runs every unlearning method on a copy of the target and evaluates each:
   ``forget_prob`` (mean per-token answer probability on the forget set, TOFU's prob),
   ``utility`` (the demo's own: harmonic mean of prob, ROUGE-L recall and truth-ratio score on
   its retain and facts splits; TOFU's ``model_utility`` is nine scores over TOFU's splits),
   ``forget_quality`` (KS p-value of forget-set truth ratios against the
   retain model's), wall ``seconds`` and ``peak_mb`` (resident peak above the start).
4. Prints a table and writes ``OUT/report.json`` and ``OUT/tradeoff.png``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from unlearnx.data import synthetic
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.eval import report, tofu
from unlearnx.models import tiny_llama
from unlearnx.profiling import peak_extra_mb
from unlearnx.train.api import CONSTANT_SCHEDULE, UnlearnConfig, finetune, unlearn
from unlearnx.train.methods import METHODS

# Per-method settings for the demo's tiny model (learning rate, epochs over the forget set,
# hyper-parameters), chosen on seeds 0-2 on an AVX2 CPU and at the baseline ISA level so that
# the acceptance bar holds on each (docs/demo.md): lr 5e-4 where 1e-3 over-forgot and lost
# utility on some seed (NPO 0.43x, PDU 0.53x, GradDiff 0.61x); DiPO forgets more slowly and
# keeps 1e-3. PDU's dual starts at 200, above the authors' alpha = 100: its flattening lowers
# the answer probability of every split, and with both phrasings trained the retain term at
# 50 / 100 kept 0.76 / 0.85 of the utility on the worst seed (200: 0.91); as tuned before OU's
# defaults were adopted, it flattens the shifted positions without a dual warm-up. Its lr is
# 2.5e-4: with the stop rule checked every step it was then the weakest method, and halving its
# lr raised the least it kept over seeds 0-9 at avx2 and baseline from 0.86 to 0.90 (at 1e-3,
# on ten of them: 0.77); the same halving lowered DTO's least from 0.88 to 0.86, so DTO keeps
# 5e-4. DTO targets 70% of the answer tokens, the most confident ones: their gradients are
# tiny until a target gives way, which took 3-12 epochs while the rest of the model drifted
# (baseline level, seed 0: 0.78 of the utility kept at retain weight 1, at lr 5e-4), so its
# retain term weighs 2.
# The epochs are a cap: DemoConfig.stop_ratio ends each run once the forget set is forgotten.
# They run on CONSTANT_SCHEDULE (constant rate, no warm-up, weight decay or accumulation) with
# OU's fresh retain partner per forget example at every epoch. One fixed partner for the whole
# run, as the demo had before, trained the retain term on 12 of the 108 retain rows; the others
# and the facts drifted with the forgetting (seed 1 at the baseline ISA level: NPO kept 0.71 of
# the utility with fixed partners, 0.84 with fresh ones; docs/demo.md).
DEMO_METHOD_SETTINGS: dict[str, dict] = {
    "ga": {"learning_rate": 5e-4, "epochs": 10},
    "grad_diff": {"learning_rate": 5e-4, "epochs": 10},
    "npo": {"learning_rate": 5e-4, "epochs": 10},
    # the demo's own choice, tuned on it before OU's defaults (beta 4.5, forget weight 0.125) were adopted
    "simnpo": {"learning_rate": 5e-4, "epochs": 10, "hparams": {"beta": 2.5, "gamma": 1.0}},
    "dipo": {"learning_rate": 1e-3, "epochs": 10},
    "pdu": {
        "learning_rate": 2.5e-4,
        "epochs": 20,
        "hparams": {
            "alpha": 200.0,
            "dual_step_size": 5.0,
            "retain_loss_eps": 0.02,
            "dual_warmup_epochs": 0,
            "flatten_positions": "shifted",
        },
    },
    # DTO's own default has no retain term; the demo keeps the NLL one its settings were tuned with
    "dto": {
        "learning_rate": 5e-4,
        "epochs": 20,
        "retain": "nll",
        "hparams": {"target_ratio": 0.7, "alpha": 2.0},
    },
}


@dataclass
class DemoConfig:
    out: Path = Path("demo-out")
    n_authors: int = 20
    forget_authors: int = 2
    n_facts: int = 20
    hidden: int = 128
    layers: int = 2
    train_epochs: float = 40.0
    train_lr: float = 3e-3
    # decaying to 0 ends training converged, not mid-oscillation: with a constant rate the
    # target's utility ranged 0.43-0.63 across seeds and CPUs, and so did what unlearning kept
    train_lr_scheduler: str = "linear"
    batch_size: int = 8
    methods: tuple[str, ...] = tuple(METHODS)
    method_settings: dict = field(default_factory=lambda: copy.deepcopy(DEMO_METHOD_SETTINGS))
    max_new_tokens: int = 16
    seed: int = 0
    # Unlearning stops after the first optimiser step (stop_every="step"; "epoch": at the end
    # of the first epoch) whose forget_prob is at most this share of the target's (0: every
    # epoch of the method's cap). Run for a fixed 5 or 10 epochs, a method went on forgetting
    # past the bar and its utility collapsed within an epoch on some seeds (DTO 0.92 -> 0.67 of
    # the target's from epoch 5 to 6 on seed 0). Checked once an epoch, the collapse still
    # happened inside the epoch that crossed the threshold: NPO reached 0.06 / 0.78 (forget /
    # utility, shares of the target's) at the end of epoch 3 on seed 6 at the baseline ISA level,
    # GradDiff 0.14 / 0.72 on seed 1 on an Intel Xeon held to AVX2; checked every step, NPO on
    # seed 6 stopped at 0.26 / 0.92. docs/demo.md gives what each method kept, per seed and level.
    stop_ratio: float = 0.35
    stop_every: str = "step"
    # Every fact is trained (and, for the forget authors, unlearned) in both of its phrasings.
    # Trained on the answers alone, the models had never seen the paraphrase that the truth
    # ratio scores, so its score sat near chance (0.17-0.45 against prob and ROUGE near 1),
    # dominated the harmonic mean and made the utility bar a coin toss across CPUs (docs/demo.md).
    paraphrase_training: bool = True


# asks for a fact's paraphrased answer in training, so that greedy answers to the question itself
# stay in the answer's phrasing (ROUGE is scored against it)
PARAPHRASE_CUE = "Say it another way."


def _pairs(rows: list[dict], paraphrases: bool) -> list[tuple[str, str]]:
    pairs = [(r["question"], r["answer"]) for r in rows]
    if paraphrases:
        pairs += [(f"{r['question']} {PARAPHRASE_CUE}", r["paraphrased_answer"]) for r in rows]
    return pairs


STOP_EVERY = ("step", "epoch")


def _check_stop_every(name: str, value: str) -> None:
    if value not in STOP_EVERY:
        raise ValueError(f"{name}: expected {' or '.join(map(repr, STOP_EVERY))}, got {value!r}")


class StopWhenForgotten(TrainerCallback):
    """Ends training at the first optimiser step (``every="step"``) or the end of the first
    epoch (``every="epoch"``) after which the mean answer probability on ``rows`` is at most
    ``threshold`` (TOFU's ``prob``, :func:`unlearnx.eval.tofu.answer_probs`)."""

    def __init__(self, model, tokenizer, rows: list[dict], threshold: float, every: str = "step") -> None:
        _check_stop_every("every", every)
        self.model, self.tok, self.rows, self.threshold, self.every = model, tokenizer, rows, threshold, every

    def _check(self, control):
        was_training = self.model.training
        self.model.eval()
        prob = float(tofu.answer_probs(self.model, self.tok, self.rows, batch_size=16).mean())
        self.model.train(was_training)
        if prob <= self.threshold:
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._check(control) if self.every == "step" else control

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._check(control) if self.every == "epoch" else control


def evaluate(
    model, tok, data: dict[str, list[dict]], cfg: DemoConfig, retain_ratios: list[float] | None
) -> dict:
    model.eval()
    per = {
        name: tofu.evaluate_split(
            model, tok, data[name], "qa", batch_size=16, max_new_tokens=cfg.max_new_tokens
        )
        for name in ("forget", "retain", "facts")
    }
    summary = {name: tofu.summarize(rows) for name, rows in per.items()}
    scores = [summary[s][m] for s in ("retain", "facts") for m in ("prob", "rouge", "truth_ratio")]
    forget_ratios = [e["truth_ratio"] for e in per["forget"]]
    return {
        "forget_prob": summary["forget"]["prob"],
        "utility": 0.0 if min(scores) <= 0 else len(scores) / sum(1 / s for s in scores),
        "forget_quality": None
        if retain_ratios is None
        else tofu.forget_quality(torch.tensor(forget_ratios), torch.tensor(retain_ratios)),
        "forget_truth_ratios": forget_ratios,
        "splits": summary,
    }


def run(cfg: DemoConfig, log=print) -> dict:
    """The whole demo; returns the report (also written to ``cfg.out/report.json``)."""
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods: unknown {sorted(unknown)}; choose from {sorted(METHODS)}")
    _check_stop_every("stop_every", cfg.stop_every)  # before the minute of training, not after
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = synthetic.split(cfg.n_authors, cfg.forget_authors, cfg.n_facts, cfg.seed)
    texts = [
        r[k] for rows in data.values() for r in rows for k in ("question", "answer", "paraphrased_answer")
    ]
    texts += [p for rows in data.values() for r in rows for p in r["perturbed_answer"]]
    texts.append(PARAPHRASE_CUE)
    tok = build_word_tokenizer(texts)
    train_cfg = UnlearnConfig(
        **{**CONSTANT_SCHEDULE, "lr_scheduler": cfg.train_lr_scheduler},
        learning_rate=cfg.train_lr,
        epochs=cfg.train_epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        logging_steps=50,
    )
    report_json: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    }
    models = {}
    for name, rows in (
        ("retain_model", data["retain"] + data["facts"]),
        ("target", data["forget"] + data["retain"] + data["facts"]),
    ):
        t0 = time.perf_counter()
        model = tiny_llama(
            len(tok), hidden=cfg.hidden, layers=cfg.layers, max_positions=128, seed=cfg.seed, tokenizer=tok
        )
        pairs = _pairs(rows, cfg.paraphrase_training)
        finetune(model, tok, pairs, train_cfg, cfg.out / "runs" / name)
        models[name] = model
        log(f"trained {name} from scratch on {len(pairs)} QA pairs in {time.perf_counter() - t0:.0f} s")
    retain_eval = evaluate(models["retain_model"], tok, data, cfg, None)
    retain_ratios = retain_eval["forget_truth_ratios"]
    retain_eval["forget_quality"] = tofu.forget_quality(
        torch.tensor(retain_ratios), torch.tensor(retain_ratios)
    )
    report_json["retain_model"] = retain_eval
    report_json["target"] = evaluate(models["target"], tok, data, cfg, retain_ratios)
    report_json["methods"] = {}
    for method in cfg.methods:
        settings = dict(cfg.method_settings.get(method, {}))
        ucfg = UnlearnConfig(
            method=method,
            hparams=settings.pop("hparams", {}),
            batch_size=4,
            seed=cfg.seed,
            logging_steps=5,
            **{**CONSTANT_SCHEDULE, **settings},
        )
        model = copy.deepcopy(models["target"]).train()
        t0 = time.perf_counter()
        result: dict = {}

        stop = []
        if cfg.stop_ratio > 0:
            threshold = cfg.stop_ratio * report_json["target"]["forget_prob"]
            stop = [StopWhenForgotten(model, tok, data["forget"], threshold, cfg.stop_every)]

        def job(model=model, ucfg=ucfg, method=method, result=result, stop=stop) -> None:
            runs = cfg.out / "runs" / method
            forget = _pairs(data["forget"], cfg.paraphrase_training)
            retain = _pairs(data["retain"], cfg.paraphrase_training)
            result.update(unlearn(model, tok, forget, retain, ucfg, runs, callbacks=stop))

        peak = peak_extra_mb(job, torch.device("cpu"))
        seconds = time.perf_counter() - t0
        entry = evaluate(model, tok, data, cfg, retain_ratios)
        entry.update(
            seconds=seconds,
            peak_mb=peak,
            steps=result["steps"],
            epochs=result["epochs"],
            cache_bytes=result["cache_bytes"],
            reference_model_bytes=result["reference_model_bytes"],
        )
        report_json["methods"][method] = entry
        log(
            f"{method:<10} forget_prob {entry['forget_prob']:.4f}  utility {entry['utility']:.4f}  "
            f"{seconds:.0f} s"
        )
    report_json["acceptance"] = acceptance(report_json)
    (cfg.out / "report.json").write_text(json.dumps(report_json, indent=1) + "\n")
    runs = {"target": report_json["target"], "retain model": retain_eval, **report_json["methods"]}
    report.plot_tradeoff(runs, cfg.out / "tradeoff.png", utility="utility")
    return report_json


def acceptance(rep: dict) -> dict:
    """Per method but ``ga``: forget_prob at most half the target's, utility at least 80% of it."""
    t = rep["target"]
    return {
        m: {
            "forget_prob_halved": e["forget_prob"] <= 0.5 * t["forget_prob"],
            "utility_kept_80pct": e["utility"] >= 0.8 * t["utility"],
        }
        for m, e in rep["methods"].items()
        if m != "ga"
    }


def table(rep: dict) -> str:
    rows = [("target", rep["target"]), ("retain model", rep["retain_model"]), *rep["methods"].items()]
    lines = [
        f"{'model':<14}{'forget_prob':>12}{'utility':>10}{'forget_q':>10}{'epochs':>8}{'seconds':>9}{'peak_mb':>9}"
    ]
    for name, e in rows:
        fq = "-" if e.get("forget_quality") is None else f"{e['forget_quality']:.3g}"
        epochs = "-" if e.get("epochs") is None else f"{e['epochs']:.3g}"
        lines.append(
            f"{name:<14}{e['forget_prob']:12.4f}{e['utility']:10.4f}{fq:>10}{epochs:>8}"
            f"{e.get('seconds', 0):9.1f}{e.get('peak_mb', 0):9.0f}"
        )
    return "\n".join(lines)
