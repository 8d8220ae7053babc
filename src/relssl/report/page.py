"""The report page: one self-contained HTML document (inline CSS, inline SVG charts, base64 PNGs, no scripts).

Sections in reading order: summary, what is missing, loss, other logged metrics, monitor, evaluation,
diagnostics, pictures, other metrics, config. A piece the run lacks keeps its section with a note
saying what would produce it, so the page always tells the whole story of the folder.
"""

from __future__ import annotations

import datetime
from html import escape

from relssl import __version__
from relssl.report.charts import diagnostics_chart, loss_chart, metric_charts, monitor_chart
from relssl.report.markup import STYLE, data_image, note, section, table
from relssl.report.run_data import PICTURES, RunData
from relssl.report.summary import (
    evaluation_rows,
    format_value,
    other_metrics,
    protocol_settings,
    run_summary,
)

__all__ = ["render_page"]

#: How each missing piece comes about, for the notes.
HOW_TO_MAKE = {
    "config.yaml": "relssl train writes it when the run starts",
    "metrics.json": "relssl train writes it when training ends or stops",
    "train_log.csv": "relssl train writes it as it trains",
    "monitor.csv": "train with --set eval.monitor_every=N for a kNN monitor every N epochs",
    "retrieval.png": "relssl eval retrieval --checkpoint RUN_DIR draws it",
    "tsne.png": "relssl eval tsne --checkpoint RUN_DIR draws it",
}


def _cell(value: float) -> str:
    """A CSV cell for a table: whole numbers (epochs, steps, cluster counts) without decimals."""
    return format_value(int(value) if value.is_integer() else value)


def _chart(svg: str | None) -> str:
    return f'<div class="chart">{svg}</div>' if svg else ""


def _missing(data: RunData) -> list[str]:
    """One line per expected file that is absent or could not be used."""
    lines = [f"{name}: {why}" for name, why in data.notes.items()]
    absent = {
        "config.yaml": data.config_text is None, "metrics.json": data.metrics is None,
        "train_log.csv": data.train_log is None, "monitor.csv": data.monitor is None,
        **{name: name not in data.pictures for name in PICTURES},
    }
    lines += [f"{name}: not in this run ({HOW_TO_MAKE[name]})" for name, gone in absent.items()
              if gone and name not in data.notes]
    return lines


def _loss_section(data: RunData) -> str:
    if data.train_log is None:
        return section("Training loss", note("No loss curve: train_log.csv is missing or unusable."), "loss")
    log = data.train_log
    body = _chart(loss_chart(log))
    first, last = log["loss"][0], log["loss"][-1]
    body += (f"<p>{len(log['loss']):,} logged steps; loss {escape(format_value(first))} at the first, "
             f"{escape(format_value(last))} at the last.</p>")
    extra = metric_charts(log)
    if extra:
        body += "<h3>Other logged metrics</h3>" + _chart(extra)
    return section("Training loss", body, "loss")


def _monitor_section(data: RunData) -> str:
    svg = monitor_chart(data.monitor) if data.monitor else None
    if not svg:
        return section("Monitor during training", note(f"No monitor curve: {HOW_TO_MAKE['monitor.csv']}."), "monitor")
    assert data.monitor is not None
    names = [c for c in data.monitor if c not in ("epoch", "step")]
    rows = [[_cell(data.monitor[c][i]) for c in data.monitor] for i in range(len(data.monitor[names[0]]))]
    return section("Monitor during training", _chart(svg) + table(list(data.monitor), rows,
                                                                     [True] * len(data.monitor)), "monitor")


def _evaluation_section(data: RunData) -> str:
    rows = evaluation_rows(data.metrics)
    if not rows:
        why = "no metrics.json" if data.metrics is None else "metrics.json holds no evaluation scores"
        return section("Evaluation", note(f"No evaluation results ({why})."), "evaluation")
    has_random = any(r.random_init is not None for r in rows)
    header = ["metric", "key", "learned"] + (["random init"] if has_random else [])
    cells = [[r.label, r.key, format_value(r.learned)] + ([format_value(r.random_init)] if has_random else [])
             for r in rows]
    body = table(header, cells, [False, False, True, True])
    for protocol, settings in protocol_settings(data.metrics).items():
        body += f"<h3>{escape(protocol)} protocol</h3>"
        body += table(["setting", "value"], [[k, format_value(v)] for k, v in settings.items()])
    return section("Evaluation", body, "evaluation")


def _diagnostics_section(data: RunData) -> str:
    if not data.diagnostics:
        return ""
    svg = diagnostics_chart(data.diagnostics)
    last = [[name, _cell(values[-1])] for name, values in data.diagnostics.items()]
    body = _chart(svg) + "<h3>Last values</h3>" + table(["diagnostic", "value"], last, [False, True])
    return section("Method diagnostics", body, "diagnostics")


def _pictures_section(data: RunData) -> str:
    body = ""
    for name, title in PICTURES.items():
        body += f"<h3>{escape(title)}</h3>"
        if name in data.pictures:
            body += data_image(data.pictures[name], title)
        else:
            body += note(f"No {name}: {data.notes.get(name, HOW_TO_MAKE[name])}.")
    return section("Pictures", body, "pictures")


def _config_section(data: RunData) -> str:
    if data.config_text is None:
        return section("Configuration", note("No config.yaml in this run directory."), "config")
    return section("Configuration (config.yaml)", f"<pre>{escape(data.config_text)}</pre>", "config")


def render_page(data: RunData, generated: datetime.datetime | None = None) -> str:
    """The whole report as HTML text."""
    when = (generated or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    summary = section("Run", table(["", ""], run_summary(data)), "summary")
    missing = _missing(data)
    parts = [summary]
    if missing:
        parts.append(section("Missing from this run", "<ul>" + "".join(f"<li>{escape(m)}</li>" for m in missing)
                             + "</ul>", "missing"))
    parts += [_loss_section(data), _monitor_section(data), _evaluation_section(data), _diagnostics_section(data),
              _pictures_section(data)]
    other = other_metrics(data.metrics)
    if other:
        parts.append(section("Other metrics (metrics.json)", table(["key", "value"], other), "other"))
    parts.append(_config_section(data))
    title = f"relssl report: {data.run_dir.name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><main>"
        f"<h1>{escape(title)}</h1><p class=\"sub\">{escape(str(data.run_dir.resolve()))} · generated {when} "
        f"by relssl {escape(__version__)}</p>\n" + "\n".join(p for p in parts if p) + "\n</main></body></html>\n"
    )
