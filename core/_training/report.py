"""What a training run leaves for the user: metric logs (CSV, JSON), a plot, a summary table."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

from .._files import atomic_path, write_text
from .history import EpochRecord


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """An epoch's record with nested metrics as ``val.head.metric`` columns."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for sub, inner in flat(value).items():
                out[f"{key}.{sub}"] = inner
        else:
            out[key] = value
    return out


def discard_unstarted_run(run_dir: Path, checkpoint: str) -> None:
    """Remove a run folder this run created when the run failed before its first
    ``checkpoint``: nothing in it can be resumed, and a half-made folder misleads."""
    if run_dir.is_dir() and not (run_dir / checkpoint).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def write_validation_rows(run_dir: Path, rows: Any, groups: Any = None, group_by: str | None = None) -> None:
    """``validation_rows.csv``: the table's row numbers (and groups) held out for validation."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["row", group_by] if group_by else ["row"])
    for i, row in enumerate(rows):
        writer.writerow([int(row), groups[i]] if group_by else [int(row)])
    write_text(run_dir / "validation_rows.csv", out.getvalue())


def write_logs(run_dir: Path, history: list[EpochRecord]) -> None:
    """``metrics.json`` (the epochs' records) and ``metrics.csv`` (one row an epoch)."""
    records = [r.to_dict() for r in history]
    write_text(run_dir / "metrics.json", json.dumps(json_safe(records), indent=2))
    rows = [flat(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(run_dir / "metrics.csv", out.getvalue())


def csv_text(header: list[str], rows: Any) -> str:
    """A CSV table's text: the ``header``, then each of ``rows`` (sequences of values)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def plot_curves(run_dir: Path, history: list[EpochRecord]) -> str:
    """Write ``curves.png`` (losses, and each head's validation metrics); returns a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'polymodal[plot]')"
    epochs = [r.epoch for r in history]
    validated = [r.val for r in history]
    heads = sorted({h for v in validated if v is not None for h in v.heads})
    fig, axes = plt.subplots(1, 1 + len(heads), figsize=(4.5 * (1 + len(heads)), 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [r.train_loss for r in history], label="train loss")
    if any(v is not None for v in validated):
        ax.plot(epochs, [math.nan if v is None else v.loss for v in validated], label="val loss")
    ax.set_xlabel("epoch")
    ax.set_title("loss")
    ax.legend()
    last = validated[-1]
    for ax, head in zip(axes[0][1:], heads):
        names = [k for k in (last.heads.get(head, {}) if last else {}) if k != "loss"]
        for name in names:
            ax.plot(epochs, [math.nan if v is None else v.heads.get(head, {}).get(name, math.nan)
                             for v in validated], label=name)
        ax.set_xlabel("epoch")
        ax.set_title(f"{head} (validation)")
        ax.legend(fontsize="small")
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    fig.tight_layout()
    path = run_dir / "curves.png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
    return f"plot: {path}"


def summary_table(metrics: dict[str, dict[str, float]]) -> str:
    """Heads as rows, metrics as columns."""
    names: list[str] = []
    for values in metrics.values():
        names += [k for k in values if k not in names]
    rows = [["head", *names]]
    for head, values in metrics.items():
        rows.append([head, *(_fmt(values.get(n)) for n in names)])
    return "\n".join(aligned(rows))


def aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells as text lines, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"
