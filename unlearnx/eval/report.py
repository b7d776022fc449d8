"""Reports over evaluation runs: a comparison table and plots.

A run is the ``TOFU_SUMMARY.json`` / ``MUSE_SUMMARY.json`` written by ``unlearnx eval`` (or
any summary JSON with OU's metric names); a
training history is a JSON Lines file of ``{"step": ..., <metric>: ...}`` records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

COLUMNS = (
    "forget_quality",
    "model_utility",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_truth_ratio",
    "privleak",
    "extraction_strength",
)
SUMMARY_FILES = ("TOFU_SUMMARY.json", "MUSE_SUMMARY.json", "summary.json")


def _value(summary: Mapping, key: str):
    node = summary
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def load_summary(path: str | Path) -> dict:
    """A run's summary; a folder means the first of its :data:`SUMMARY_FILES`."""
    path = Path(path)
    if path.is_dir():
        path = next((path / f for f in SUMMARY_FILES if (path / f).is_file()), path / SUMMARY_FILES[0])
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"runs: cannot read a summary from {path} ({err})") from err


def comparison_table(runs: Mapping[str, Mapping], columns: Sequence[str] = COLUMNS) -> str:
    """Markdown table, one row per run, one column per metric key (``"a/b"`` reaches
    into nested entries; missing values print as ``-``)."""
    head = "| run | " + " | ".join(columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    rows = []
    for name, summary in runs.items():
        cells = []
        for c in columns:
            v = _value(summary, c)
            cells.append("-" if v is None else f"{v:.4g}" if isinstance(v, (int, float)) else str(v))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows]) + "\n"


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tradeoff(
    runs: Mapping[str, Mapping],
    path: str | Path,
    *,
    utility: str = "model_utility",
    forget: str = "forget_quality",
    forget_label: str = "forget quality (KS p-value)",
) -> Path:
    """Scatter of the ``forget`` key (log scale; TOFU's forget quality by default) against the
    ``utility`` key (TOFU's model utility by default), one labelled point per run with both
    values; writes a PNG and returns its path."""
    fig, ax = _figure((5.5, 4))
    for name, s in runs.items():
        fq, mu = _value(s, forget), _value(s, utility)
        if fq is None or mu is None:
            continue
        ax.scatter(mu, max(fq, 1e-30))
        ax.annotate(name, (mu, max(fq, 1e-30)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(utility.replace("_", " "))
    ax.set_ylabel(forget_label)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_history(records: Sequence[Mapping], metrics: Sequence[str], path: str | Path) -> Path:
    """Curves of ``metrics`` over training steps from history records; writes a PNG."""
    fig, ax = _figure((6, 4))
    for m in metrics:
        points = [(r["step"], _value(r, m)) for r in records if _value(r, m) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=m)
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
