"""What the report's tables say: the run summary, the evaluation results beside their random-init baselines, the rest.

metrics.json mixes run facts (method, steps, time), scores (`linear_top1`, `random_init_linear_top1`,
`knn_top1`, `retrieval_...`), protocol settings (`linear_protocol`) and structured records
(`diagnostics`, `monitor`). Each key lands in exactly one table, so nothing is hidden or shown twice.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from relssl.report.run_data import RunData

__all__ = ["EvalRow", "evaluation_rows", "format_value", "other_metrics", "protocol_settings", "run_summary"]

RANDOM_PREFIX = "random_init_"
#: Run facts shown in the summary (metrics.json keys), so they stay out of the generic table.
SUMMARY_KEYS = ("method", "backbone", "dataset", "seed", "train_steps", "train_epochs_completed", "train_seconds",
                "finished", "eval_dataset", "eval_root", "eval_protocol", "data_skipped_images")
#: Structured records drawn as charts elsewhere in the page.
CHARTED_KEYS = ("diagnostics", "monitor")
#: Prefixes of evaluation scores; a numeric key starting with one of them is a result.
SCORE_PREFIXES = ("linear_", "knn_", "retrieval_", "finetune_", "semi_", "transfer_", "monitor_")
#: Words that make a readable label of a score key's parts.
WORDS = {"std": "standardised features", "knn": "kNN", "accuracy": "accuracy (%)"}


@dataclass(frozen=True)
class EvalRow:
    """One score: its key, a readable label, the learned backbone's value and the random init's (if measured)."""

    key: str
    label: str
    learned: Any
    random_init: Any


def format_value(value: Any) -> str:
    """A metric value as text: floats to 2 decimals (4 significant digits when small), others as JSON."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1 and value != 0 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{int(hours)} h" if hours else "", f"{int(minutes)} min" if minutes or hours else "", f"{secs:.1f} s"]
    return " ".join(p for p in parts if p)


def _config_value(data: RunData, section: str, key: str) -> Any:
    found = (data.config or {}).get(section)
    return found.get(key) if isinstance(found, dict) else None


def _status(data: RunData) -> str:
    """Finished, stopped early, or still training / killed (no metrics.json), with the last logged step."""
    last = ""
    if data.train_log and data.train_log.get("step"):
        last = f" (last logged step {int(data.train_log['step'][-1]):,})"
    if data.metrics is None:
        return "unknown: no metrics.json yet — still training, or killed before the end" + last
    finished = data.metrics.get("finished")
    if finished is True:
        return "finished"
    if finished is False:
        return "stopped before the end of the schedule (resume with relssl train --resume RUN_DIR)" + last
    return "unknown (metrics.json has no 'finished')" + last


def run_summary(data: RunData) -> list[tuple[str, str]]:
    """The summary table's rows (label, text), from metrics.json with config.yaml filling in what it lacks."""
    m = data.metrics or {}
    backbone = m.get("backbone") or _config_value(data, "backbone", "name")
    dataset = m.get("dataset") or _config_value(data, "data", "dataset")
    method = m.get("method") or (data.config or {}).get("method")
    epochs, max_steps = _config_value(data, "train", "epochs"), _config_value(data, "train", "max_steps")
    planned = f"{epochs} epoch{'' if epochs == 1 else 's'}" if epochs is not None else "—"
    if max_steps:
        planned += f", at most {max_steps:,} steps"
    steps = m.get("train_steps")
    if steps is None and data.train_log and data.train_log.get("step"):
        steps = int(data.train_log["step"][-1])
    seconds = m.get("train_seconds")
    if seconds is None and data.train_log and data.train_log.get("elapsed_s"):
        seconds = data.train_log["elapsed_s"][-1]
    rows = [
        ("run", data.run_dir.name), ("status", _status(data)), ("method", format_value(method)),
        ("backbone", format_value(backbone)), ("dataset", format_value(dataset)),
        ("seed", format_value(m.get("seed", (data.config or {}).get("seed")))),
        ("schedule", planned), ("steps trained", format_value(steps)),
        ("epochs completed", format_value(m.get("train_epochs_completed"))),
        ("batch size", format_value(_config_value(data, "train", "batch_size"))),
        ("training time", _duration(seconds)),
    ]
    if "eval_protocol" in m or "eval_dataset" in m:
        where = f" ({m['eval_root']})" if m.get("eval_root") else ""  # another folder than pretraining's
        rows.append(("evaluation", f"{format_value(m.get('eval_protocol'))} on {format_value(m.get('eval_dataset'))}"
                                   f"{where}"))
    if "data_skipped_images" in m:
        rows.append(("unreadable images skipped", format_value(m["data_skipped_images"])))
    return rows


def _word(part: str) -> str:
    found = re.fullmatch(r"top(\d+)", part)
    return f"top-{found.group(1)} (%)" if found else WORDS.get(part, part)


def _label(key: str) -> str:
    """`linear_std_top1` -> `linear (standardised features) top-1 (%)`: protocol, variant, measure in words."""
    parts = key.split("_")
    if len(parts) < 2:
        return _word(key)
    middle = " ".join(_word(p) for p in parts[1:-1])
    return f"{_word(parts[0])}{f' ({middle})' if middle else ''} {_word(parts[-1])}"


def _is_score(key: str, value: Any) -> bool:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return numeric and (key.startswith(SCORE_PREFIXES) or re.search(r"(^|_)(top\d+|accuracy)$", key) is not None)


def evaluation_rows(metrics: dict[str, Any] | None) -> list[EvalRow]:
    """Scores of the learned backbone, each beside `random_init_<key>` when the run measured it."""
    m = metrics or {}
    rows = []
    for key, value in m.items():
        if key.startswith(RANDOM_PREFIX) or not _is_score(key, value):
            continue
        rows.append(EvalRow(key, _label(key), value, m.get(RANDOM_PREFIX + key)))
    for key, value in m.items():  # a random-init score without its learned counterpart still shows
        base = key.removeprefix(RANDOM_PREFIX)
        if key.startswith(RANDOM_PREFIX) and _is_score(base, value) and base not in m:
            rows.append(EvalRow(base, _label(base), None, value))
    return rows


def protocol_settings(metrics: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The `<protocol>_protocol` records (probe epochs, lr, optimizer, ...) by protocol name."""
    return {k.removesuffix("_protocol"): v for k, v in (metrics or {}).items()
            if k.endswith("_protocol") and isinstance(v, dict)}


def other_metrics(metrics: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Every metrics.json key no other table or chart shows, as (key, text)."""
    m = metrics or {}
    shown = set(SUMMARY_KEYS) | set(CHARTED_KEYS) | {f"{p}_protocol" for p in protocol_settings(m)}
    shown |= {row.key for row in evaluation_rows(m)} | {RANDOM_PREFIX + row.key for row in evaluation_rows(m)}
    return [(k, format_value(v)) for k, v in _flatten({k: v for k, v in m.items() if k not in shown})]


def _flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys (`feature_stats.effective_rank`), so each value gets its own row."""
    out: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out
