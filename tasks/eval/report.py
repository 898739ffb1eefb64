"""What people read: reports/eval.html (one self-contained page: the side-by-side table, a plot
per metric across stages, sample answers), the DVC plot CSVs, the answers per model and the
blind review sheet for domain experts."""

from __future__ import annotations

import csv
import html
import io
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.core.io import write_jsonl_atomic, write_text_atomic
from tasks.eval.inputs import EvalInputs, Question

OPEN_BOOK_COLUMN = "base, open book"
# Plot groups: a title and the metric keys drawn in it (those present are drawn).
LOWER_IS_BETTER = ("ppl_", "literal_invented")


def file_name(model: str) -> str:
    return model.replace("/", "-")


def write_answers(
    folder: Path,
    model: str,
    questions: Sequence[Question],
    answers: Mapping[str, str],
    judged: Mapping[str, Mapping[str, float | None]] | None,
) -> None:
    rows = (
        {
            "id": q.id,
            "set": q.set,
            "kind": q.kind,
            "url": q.url,
            "question": q.question,
            "reference": q.reference,
            "answer": answers[q.id],
            "scores": dict((judged or {}).get(q.id, {})),
        }
        for q in questions
        if q.id in answers
    )
    write_jsonl_atomic(folder / f"{file_name(model)}.jsonl", rows)


def render_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_stage_csvs(reports: Path, metrics: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """reports/eval_perplexity.csv and reports/eval_scores.csv: one row per model in stage
    order, one column per metric (DVC plots draw each column against the model)."""
    keys = sorted({k for m in metrics.values() for k in m})
    groups = {
        "eval_perplexity.csv": [k for k in keys if k.startswith("ppl_")],
        "eval_scores.csv": [k for k in keys if not k.startswith("ppl_")],
    }
    written = []
    for name, columns in groups.items():
        rows = [[model, *(_value(metrics[model].get(k)) for k in columns)] for model in metrics]
        write_text_atomic(reports / name, render_csv(["model", *columns], rows))
        written.append(reports / name)
    return written


def _value(entry: Mapping[str, Any] | None) -> Any:
    return "" if not entry or entry.get("value") is None else entry["value"]


def write_review_sheet(
    folder: Path,
    questions: Sequence[Question],
    first: Mapping[str, str],
    last: Mapping[str, str],
    names: tuple[str, str],
    sample: int,
    seed: int,
) -> int:
    """review.csv: per question the two answers as A and B in a random order, for experts
    who must not know which model wrote which; review_key.csv says which was which."""
    rng = random.Random(seed)
    chosen = [q for q in questions if q.id in first and q.id in last][:sample]
    sheet, key = [], []
    for q in chosen:
        pair = [(names[0], first[q.id]), (names[1], last[q.id])]
        rng.shuffle(pair)
        sheet.append([q.id, q.question, q.reference, pair[0][1], pair[1][1], "", ""])
        key.append([q.id, pair[0][0], pair[1][0]])
    header = ["id", "question", "reference", "answer_a", "answer_b", "better (A/B/same)", "notes"]
    write_text_atomic(folder / "review.csv", render_csv(header, sheet))
    write_text_atomic(folder / "review_key.csv", render_csv(["id", "a", "b"], key))
    return len(chosen)


def render_metric_plot(
    key: str,
    models: Sequence[str],
    metrics: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Any] | None,
) -> str:
    """One metric across the stages with its 95 % intervals, as inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys, lows, highs = [], [], [], []
    for i, model in enumerate(models):
        entry = metrics[model].get(key) or {}
        if entry.get("value") is None:
            continue
        xs.append(i)
        ys.append(entry["value"])
        lows.append(
            entry["value"] - (entry.get("low") if entry.get("low") is not None else entry["value"])
        )
        highs.append(
            (entry.get("high") if entry.get("high") is not None else entry["value"])
            - entry["value"]
        )
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=100)
    ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, color="#1f5fa8")
    ref = (reference or {}).get(key) or {}
    if ref.get("value") is not None:
        ax.axhline(
            ref["value"], color="#c0392b", linestyle="--", linewidth=1, label=OPEN_BOOK_COLUMN
        )
        ax.legend(fontsize=7, loc="best")
    ax.set_xticks(range(len(models)), models, fontsize=7)
    ax.set_title(
        key + ("  (lower is better)" if key.startswith(LOWER_IS_BETTER) else ""), fontsize=9
    )
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.find("<svg") :]


def render_cell(entry: Mapping[str, Any] | None) -> str:
    if entry and entry.get("not_available"):
        return f'<td class="na" title="{html.escape(entry["not_available"])}">n/a</td>'
    if not entry or entry.get("value") is None:
        return '<td class="na">&ndash;</td>'
    interval = ""
    if entry.get("low") is not None and entry.get("n", 0) > 1:
        interval = f'<span class="ci">[{entry["low"]:.3g}, {entry["high"]:.3g}]</span>'
    return f'<td>{entry["value"]:.3g} {interval}<span class="n">n={entry.get("n", 0)}</span></td>'


def measured_keys(
    metrics: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any] | None
) -> tuple[list[str], list[str]]:
    """Metric keys with a value for some model, and those with none (no items of their kind)."""
    keys = sorted({k for m in (*metrics.values(), reference or {}) for k in m})
    measured = [
        k
        for k in keys
        if any(
            (m.get(k) or {}).get("value") is not None for m in (*metrics.values(), reference or {})
        )
    ]
    return measured, [k for k in keys if k not in measured]


def render_table(
    models: Sequence[str],
    metrics: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Any] | None,
) -> str:
    keys, unmeasured = measured_keys(metrics, reference)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    if reference:
        head += f"<th>{OPEN_BOOK_COLUMN}</th>"
    rows = []
    for key in keys:
        cells = "".join(render_cell(metrics[m].get(key)) for m in models)
        if reference:
            cells += render_cell(reference.get(key))
        rows.append(f"<tr><th>{html.escape(key)}</th>{cells}</tr>")
    note = ""
    if unmeasured:
        names = ", ".join(html.escape(k) for k in unmeasured)
        note = f'<p class="note">Not measured (no questions of their kind): {names}.</p>'
    for model in models:
        why = {e["not_available"] for e in metrics[model].values() if e.get("not_available")}
        if why:
            note += (
                f'<p class="note">n/a for {html.escape(model)}: '
                f"{html.escape('; '.join(sorted(why)))}.</p>"
            )
    return f'<table class="grid"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>{note}'


def render_samples(
    inputs: EvalInputs,
    answers: Mapping[str, Mapping[str, str]],
    names: tuple[str, str],
    judged: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    sample: int,
) -> str:
    blocks = []
    for q in inputs.questions[:sample]:
        cells = []
        for name in names:
            scores = judged.get(name, {}).get(q.id, {})
            shown = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if v is not None)
            answer = answers.get(name, {}).get(q.id, "")
            cells.append(
                f'<div class="ans"><b>{html.escape(name)}</b><p>{html.escape(answer)}</p>'
                f"<small>{html.escape(shown)}</small></div>"
            )
        blocks.append(
            f'<div class="q"><div class="meta">{html.escape(q.set)} · {html.escape(q.kind)} · '
            f'<a href="{html.escape(q.url)}">{html.escape(q.url)}</a></div>'
            f'<p class="question">{html.escape(q.question)}</p>'
            f'<div class="ans ref"><b>reference</b><p>{html.escape(q.reference)}</p></div>'
            f"{''.join(cells)}</div>"
        )
    return "".join(blocks)


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table.grid{border-collapse:collapse;font-size:13px}
table.grid td,table.grid th{border:1px solid #ddd;padding:4px 8px;text-align:right;
vertical-align:top}
table.grid th{background:#f4f6f8;text-align:left}
.ci{color:#666;font-size:11px;margin-left:4px}.n{color:#999;font-size:10px;display:block}
.na{color:#bbb;text-align:center}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots svg{border:1px solid #eee}
.q{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0;display:grid;
grid-template-columns:1fr 1fr 1fr;gap:8px}
.q .meta,.q .question{grid-column:1/4;margin:0}.q .meta{font-size:11px;color:#666}
.q .question{font-weight:600}.ans{background:#fafafa;padding:6px;border-radius:4px;font-size:13px}
.ans.ref{background:#eef6ee}.ans p{margin:4px 0;white-space:pre-wrap}
.note{color:#666;font-size:12px}
.headline{font-size:15px;background:#f4f6f8;padding:10px;border-radius:6px}
"""


def render_html(report: Mapping[str, Any], plots: Sequence[str], table: str, samples: str) -> str:
    head = report["headline"]
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in head["lines"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>eval report</title>
<style>{STYLE}</style></head><body>
<h1>Does the adapted model know the documentation better than the base?</h1>
<div class="headline"><ul>{lines}</ul></div>
<h2>Every stage side by side</h2>
<p>Values with their bootstrap 95 % interval and the number of items. <i>probes</i>: held-out
questions about pages the model trained on; <i>held_out</i>: questions about pages it never
saw. Perplexities are lower-is-better, like <i>literal_invented</i>.</p>
{table}
<h2>Across the stages</h2><div class="plots">{"".join(plots)}</div>
<h2>Sample answers</h2>{samples}
</body></html>"""
