"""Commands that run a trained model on a table: ``evaluate``, ``predict`` and ``explain``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import BAD_ROW


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Table with the target columns.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--on-bad-row", type=BAD_ROW, default="fail", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate(model_path: str, data: str, batch_size: int, device: str, on_bad_row: str,
             as_json: bool) -> None:
    """Metrics of each head of a trained model on a table, and confusion matrices."""
    from .._modelfile import load
    from .._training.inference import RowReport, evaluate as run_evaluation, render_evaluation
    from .._training.report import json_safe

    result = run_evaluation(model_path, data, batch_size=batch_size, on_bad_row=on_bad_row,
                            device=device)  # from the path: its messages name the file
    model = load(model_path)
    if as_json:
        click.echo(json.dumps(json_safe(result), indent=2))
        return
    report = RowReport.from_json(result)
    for line in report.lines():
        click.echo(line, err=True)
    click.echo(render_evaluation(model, result))


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Table of rows to predict (targets not needed).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="CSV file of predictions (written atomically).")
@click.option("--keep", multiple=True, help="Copy this column into the output (repeatable); one named like a"
              " prediction is written as NAME_kept.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--on-bad-row", type=BAD_ROW, default="fail", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def predict(model_path: str, data: str, output: str, keep: tuple[str, ...], batch_size: int,
            device: str, on_bad_row: str, as_json: bool) -> None:
    """Predict every row of a table: class names and probabilities, values; streamed.

    MODEL is a model file or an ONNX file that `polymodal export` wrote (run by ONNX Runtime)."""
    from .._training.inference import RowReport, predict as run_prediction

    result = run_prediction(model_path, data, output, batch_size=batch_size,
                            on_bad_row=on_bad_row, keep=keep, device=device)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    report = RowReport.from_json(result)
    for line in report.lines():
        click.echo(line, err=True)
    click.echo(f"wrote {result['rows']} prediction(s) to {output}")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Table with the target columns.")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Folder for report.txt, report.json, importance.csv, rows.csv and a chart per"
              " head (default: <model stem>.explain beside the model).")
@click.option("--rows", "rows", default="0", show_default=True,
              help="Rows to show per row: a count (the first N) or row numbers (3,17,42).")
@click.option("--keep", multiple=True, help="Show this column beside each row (repeatable).")
@click.option("--repeats", type=int, default=5, show_default=True,
              help="Shuffles of each input (and part) across rows.")
@click.option("--no-parts", is_flag=True, help="Inputs only: no column or band one at a time.")
@click.option("--attribute", type=click.Choice(["integrated_gradients", "saliency",
                                                "input_x_gradient"]),
              help="Also draw what in each chosen row's images moved each head's output, with this"
              " Captum method (pip install 'polymodal[explain]').")
@click.option("--max-rows", type=click.IntRange(1), default=5000, show_default=True,
              help="Rows kept in memory to explain; a larger table is sampled with the seed.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--on-bad-row", type=BAD_ROW, default="fail", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print report.json only.")
def explain(model_path: str, data: str, output: str | None, rows: str, keep: tuple[str, ...],
            repeats: int, no_parts: bool, attribute: str | None, max_rows: int, seed: int,
            batch_size: int, device: str, on_bad_row: str, as_json: bool) -> None:
    """What each input, column and band of a trained model contributes, per head and metric."""
    from .._training.explain import explain as run_explain
    from .._training.inference import RowReport

    chosen: int | list[int] = _row_choice(rows)
    out = output or str(Path(model_path).with_name(Path(model_path).stem + ".explain"))
    log = None if as_json else (lambda line: click.echo(line, err=True))
    result = run_explain(model_path, data, out, repeats=repeats, rows=chosen, keep=keep,
                         seed=seed, batch_size=batch_size, device=device, on_bad_row=on_bad_row,
                         max_rows=max_rows, parts=not no_parts, attribute=attribute,
                         progress=log is not None, log=log)
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
        return
    for line in RowReport.from_json(result.report.to_json()).lines():
        click.echo(line, err=True)
    click.echo(result.text())
    click.echo(f"\nwrote {out}")


def _row_choice(text: str) -> int | list[int]:
    """``--rows``: a count, or row numbers separated by commas."""
    from .._errors import DataError

    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--rows {text!r}: give a count (10) or row numbers (3,17,42)") from None
    if any(n < 1 for n in numbers) and text.strip() != "0":
        raise DataError(f"--rows {text!r}: rows are numbered from 1, and a count is at least 1"
                        " (0, the default: no row)")
    if "," not in text and len(numbers) == 1:
        return numbers[0]
    return numbers
