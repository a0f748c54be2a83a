"""``polymodal serve``: a model over HTTP (the server itself is in ``polymodal._serve``)."""

from __future__ import annotations

import click


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True,
              help="Most rows predicted in one batch (a larger request runs in parts).")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Longest a batch waits for requests being read to join it.")
@click.option("--max-queue", type=click.IntRange(1), default=1024, show_default=True,
              help="Rows the server holds, waiting or being predicted; a request beyond them"
              " is answered 503 with Retry-After.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes, each with its own copy of the model.")
@click.option("--threads", type=click.IntRange(1), help="Torch threads of each worker's model"
              " process (default: every core, shared among the workers).")
@click.option("--data-root", type=click.Path(file_okay=False),
              help="Folder a request may name image paths in (else only sent files are read).")
@click.option("--max-body-mb", type=click.FloatRange(0.001), default=32.0, show_default=True)
@click.option("--max-rows", type=click.IntRange(1), default=1024, show_default=True,
              help="Most rows in one request.")
@click.option("--drain-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds SIGTERM waits for the requests in flight.")
def serve(model_path: str, host: str, port: int, device: str, max_batch: int, max_wait_ms: float,
          max_queue: int, workers: int, threads: int | None, data_root: str | None,
          max_body_mb: float, max_rows: int, drain_timeout: float) -> None:
    """Serve a model file or ONNX export over HTTP: POST /v1/predict, batched (pip install
    'polymodal[serve]'); see docs/serve.md."""
    from .._serve.limits import Limits
    from .._serve.options import ServeOptions
    from .._serve.server import serve as run_server

    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_rows=max_rows)
    run_server(ServeOptions(model_path, host, port, device, max_batch, max_wait_ms, max_queue,
                            workers, data_root, drain_timeout, threads, limits),
               announce=lambda line: click.echo(line, err=True))
