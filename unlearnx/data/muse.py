"""MUSE data (Shi et al. 2024) in its published Hugging Face layout (``muse-bench/MUSE-News``,
``muse-bench/MUSE-Books``): configurations and splits

- ``raw``: ``forget``, ``retain1``, ``retain2``, ``holdout`` (column ``text``)
- ``knowmem``: ``forget_qa``, ``retain_qa`` and their in-context examples ``forget_qa_icl``,
  ``retain_qa_icl`` (``question``, ``answer``)
- ``verbmem``: ``forget`` (``prompt``, ``gt``)
- ``privleak``: ``forget``, ``retain``, ``holdout`` (``text``)
- ``scal``, ``sust``: ``forget_1`` ... ``forget_4`` (``text``)

A source is a hub id (``muse-bench/MUSE-News``, read with ``datasets.load_dataset``) or a local
folder with the same layout: ``<folder>/<config>/<split>.jsonl`` (or ``.json``, ``.parquet``,
or the hub's ``<split>-00000-of-00001.parquet``).
"""

from __future__ import annotations

from pathlib import Path

COLUMNS = {
    "raw": ("text",),
    "knowmem": ("question", "answer"),
    "verbmem": ("prompt", "gt"),
    "privleak": ("text",),
    "scal": ("text",),
    "sust": ("text",),
}
"""The columns each configuration's rows carry."""

EVAL_SPLITS = (
    ("knowmem", "forget_qa"),
    ("knowmem", "forget_qa_icl"),
    ("knowmem", "retain_qa"),
    ("knowmem", "retain_qa_icl"),
    ("verbmem", "forget"),
    ("privleak", "forget"),
    ("privleak", "holdout"),
)
"""What ``unlearnx eval --benchmark muse`` reads (open-unlearning's ``configs/eval/muse.yaml``)."""

_SUFFIXES = (".jsonl", ".json", ".parquet")


def _local_files(folder: Path, config: str, split: str) -> list[Path]:
    base = folder / config
    for suffix in _SUFFIXES:
        if (base / f"{split}{suffix}").is_file():
            return [base / f"{split}{suffix}"]
    return sorted(base.glob(f"{split}-*.parquet"))


def _load(source: str, config: str, split: str) -> list[dict]:
    import datasets

    folder = Path(source)
    if folder.is_dir():
        files = _local_files(folder, config, split)
        if not files:
            raise ValueError(
                f"MUSE data: {folder} has no {config}/{split} ({config}/{split}.jsonl, .json, .parquet "
                f"or {split}-*.parquet)"
            )
        kind = "parquet" if files[0].suffix == ".parquet" else "json"
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    else:
        try:
            ds = datasets.load_dataset(source, config, split=split)
        except Exception as err:  # the hub's errors are many; say which split could not be read
            raise ValueError(
                f"MUSE data: cannot load {source} {config}/{split} from the hub ({err})"
            ) from err
    missing = set(COLUMNS[config]) - set(ds.column_names)
    if missing:
        raise ValueError(
            f"MUSE data: {source} {config}/{split} lacks columns {sorted(missing)} (it has {ds.column_names})"
        )
    if len(ds) == 0:
        raise ValueError(f"MUSE data: {source} {config}/{split} is empty")
    return [dict(row) for row in ds]


def load_rows(source: str | Path, config: str, split: str) -> list[dict]:
    """Rows of one MUSE split from a hub id or a local folder (see the module docstring);
    ValueError naming the source, configuration and split when it is missing or malformed."""
    if config not in COLUMNS:
        raise ValueError(f"MUSE data: unknown configuration {config!r}, expected one of {sorted(COLUMNS)}")
    source = str(source).removeprefix("hf:")
    return _load(source, config, split)


def check_source(source: str | Path, splits=EVAL_SPLITS) -> None:
    """Reads every ``(config, split)`` in ``splits`` (a cheap pass, before any model loads);
    one ValueError listing everything that is missing."""
    errors = []
    for config, split in splits:
        try:
            load_rows(source, config, split)
        except ValueError as err:
            errors.append(str(err).removeprefix("MUSE data: "))
    if errors:
        raise ValueError("MUSE data: " + "; ".join(errors))
