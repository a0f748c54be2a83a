"""Running the API under uvicorn: one model copy per worker process, graceful SIGTERM.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, lets the requests in flight finish
(their batches run; ``drain_timeout`` bounds the wait) and then exits; meanwhile ``/ready``
answers 503 and a request that still reaches the server is refused with 503.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from .._errors import DataError, PolymodalError
from .options import ENVIRONMENT, ServeOptions


def _require_server() -> Any:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise PolymodalError(f"polymodal serve needs FastAPI and uvicorn ({exc.name} is not"
                             " installed): pip install 'polymodal[serve]'") from None
    return uvicorn


def check(options: ServeOptions) -> None:
    """Refuse options that cannot serve, before anything is loaded."""
    if options.data_root is not None and not Path(options.data_root).is_dir():
        raise DataError(f"--data-root {options.data_root}: no such folder")
    if not Path(options.model).is_file():
        raise DataError(f"{options.model}: no such model file")


def serve(options: ServeOptions, announce: Any = print) -> None:
    """Serve ``options.model`` until SIGTERM or Ctrl-C."""
    uvicorn = _require_server()
    check(options)
    from .app import create_app

    threads = options.threads or (max(1, (os.cpu_count() or 1) // options.workers)
                                  if options.workers > 1 else None)
    options = ServeOptions(**{**options.__dict__, "threads": threads})  # the model process's
    settings = dict(host=options.host, port=options.port, log_level="info", access_log=False,
                    timeout_graceful_shutdown=options.drain_timeout, server_header=False)
    if options.workers == 1:
        config = uvicorn.Config(create_app(options), **settings)  # loading errors: the CLI's
    else:
        from .predictor import Predictor

        Predictor(options.model, options.device)  # a model that cannot load fails here, once
        os.environ[ENVIRONMENT] = options.to_json()
        config = uvicorn.Config("polymodal._serve.app:from_environment", factory=True,
                                workers=options.workers, **settings)
    announce(f"serving {options.model} on http://{options.host}:{options.port}"
             f" ({options.workers} worker(s), batches of up to {options.max_batch} rows)")
    previous = signal.signal(signal.SIGTERM, _exit_quietly)  # after draining: exit status 0
    try:
        if options.workers == 1:
            uvicorn.Server(config).run()
        else:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_quietly(sig: int, frame: Any) -> None:
    sys.exit(0)
