"""Where a run's files go in MLflow, by its artifact URI, as MLflow itself would put them.

``mlflow-artifacts:`` (a server that proxies artifacts, ``mlflow server``'s default): uploaded
to the server's artifact proxy, one ``PUT`` a file. A local folder or ``file:`` URI: copied
into it, as MLflow's local artifact store does. Any other scheme (``s3:``, ``gs:``, ...):
through MLflow's own artifact store for it, imported only then (on the tracking thread).
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

from .mlflow_http import MlflowHttp


class Store(Protocol):
    def file(self, path: Path, folder: str | None) -> None: ...
    def text(self, text: str, name: str) -> None: ...
    def close(self) -> None: ...


def store_for(artifact_uri: str, server: MlflowHttp) -> Store:
    """The store of a run whose artifact URI is ``artifact_uri``, its tracking server
    ``server``."""
    parts = urlsplit(artifact_uri)
    if parts.scheme == "mlflow-artifacts":
        if parts.netloc and parts.netloc != server.netloc:  # another host serves them
            return ProxyStore(MlflowHttp(f"{server.scheme}://{parts.netloc}{server.prefix}"),
                              parts.path, own=True)
        return ProxyStore(server, parts.path, own=False)
    if parts.scheme == "file":
        return LocalStore(Path(url2pathname(parts.path)))
    if len(parts.scheme) <= 1:  # a path (on Windows, a drive letter reads as a scheme)
        return LocalStore(Path(artifact_uri))
    return LibraryStore(artifact_uri)


def _kind(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _where(root: str, folder: str | None, name: str) -> str:
    return "/".join(p.strip("/") for p in (root, folder or "", name) if p.strip("/"))


class ProxyStore:
    """The artifact proxy of an MLflow server: ``root`` is the run's path under it."""

    def __init__(self, server: MlflowHttp, root: str, own: bool):
        self.server, self.root, self.own = server, root, own

    def file(self, path: Path, folder: str | None) -> None:
        with path.open("rb") as body:
            size = os.fstat(body.fileno()).st_size
            self.server.put(_where(self.root, folder, path.name), body, size, _kind(path.name))

    def text(self, text: str, name: str) -> None:
        data = text.encode("utf-8")
        self.server.put(_where(self.root, None, name), data, len(data), _kind(name))

    def close(self) -> None:
        if self.own:
            self.server.close()


class LocalStore:
    """A folder on this machine (or a mounted one)."""

    def __init__(self, root: Path):
        self.root = root

    def file(self, path: Path, folder: str | None) -> None:
        target = self.root / folder if folder else self.root
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.name)

    def text(self, text: str, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_text(text, encoding="utf-8")

    def close(self) -> None:
        pass


class LibraryStore:
    """Any other artifact store, through MLflow's own client for it."""

    def __init__(self, artifact_uri: str):
        self.uri = artifact_uri
        self._repository: Any = None

    def _repo(self) -> Any:
        if self._repository is None:
            from .track_mlflow import SETTINGS

            for name, value in SETTINGS.items():
                os.environ.setdefault(name, value)
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            self._repository = get_artifact_repository(self.uri)
        return self._repository

    def file(self, path: Path, folder: str | None) -> None:
        self._repo().log_artifact(str(path), folder)

    def text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            path.write_text(text, encoding="utf-8")
            self._repo().log_artifact(str(path), None)

    def close(self) -> None:
        pass
