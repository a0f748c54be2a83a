"""Pretrained weights, of any modality: local weight files read without executing anything,
loaded into a module only when every weight fits, and the error for weights a library could not
fetch. What only images need (stems adapted to other channel counts, the options of an image
model library) is in the image kit, :mod:`polymodal.imagekit`."""

from __future__ import annotations

from collections.abc import Container, Mapping
from pathlib import Path

import torch

from ._errors import PolymodalError, first_line
from ._spec_files import SPEC_FOLDER

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def weights_path(path: str | Path) -> Path:
    """The weights file ``path`` names, checked to be a regular file of a known kind. A relative
    ``path`` is read from the folder of the spec file being built, if any."""
    path = Path(path).expanduser()
    folder = SPEC_FOLDER.get()
    if not path.is_absolute() and folder is not None:
        path = folder / path
    if not path.is_file():
        where = " (a relative path is read from the spec file's folder)" if folder else ""
        if path.exists():
            raise PolymodalError(f"pretrained weights {path} is not a regular file{where}")
        raise PolymodalError(f"pretrained weights file not found: {path}{where}")
    if path.suffix.lower() not in SAFE_SUFFIXES + TORCH_SUFFIXES:
        raise PolymodalError(
            f"pretrained weights file {path}: unknown type {path.suffix.lower()!r};"
            " use .safetensors (or .pth/.pt holding a state dict)")
    return path


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (preferred) or ``.pth``/``.pt`` (weights-only load).
    A relative ``path`` is read from the folder of the spec file being built, if any."""
    path = weights_path(path)
    suffix = path.suffix.lower()
    state: object  # what the file holds, a state dict once checked below
    try:
        if suffix in SAFE_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif suffix in TORCH_SUFFIXES:
            _check_torch_file(path)
            # weights_only refuses arbitrary pickled objects: a checkpoint cannot run code.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise PolymodalError(
                f"pretrained weights file {path}: unknown type {suffix!r};"
                " use .safetensors (or .pth/.pt holding a state dict)"
            )
    except PolymodalError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        said = first_line(exc, 300)
        if len(said) < 30:  # a bare key or index ("101") says nothing on its own
            said = f"{type(exc).__name__}: {said}"
        raise PolymodalError(f"cannot read pretrained weights {path}: {said}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PolymodalError(f"pretrained weights {path}: not a state dict of tensors")
    return state


def _check_torch_file(path: Path) -> None:
    """Refuse a file that ``torch.save`` cannot have written (a zip archive, or the legacy
    format's pickle) before torch reads it and fails on some index of its own."""
    import zipfile

    with path.open("rb") as handle:
        head = handle.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise PolymodalError(f"pretrained weights {path}: not a PyTorch weights file (neither"
                             " the zip archive nor the pickle that torch.save writes); give a"
                             " .safetensors file, or a state dict saved with torch.save")


def state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                   may_lack: Container[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """How the state dict ``given`` differs from the ``expected`` one: the names it lacks (but
    for ``may_lack``), those it has beyond them, and those whose tensor has another shape."""
    missing = [k for k in expected if k not in given and k not in may_lack]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k, v in expected.items() if k in given and given[k].shape != v.shape]
    return missing, unexpected, reshaped


def mismatch_problems(missing: list[str], unexpected: list[str], wrong: list[str],
                      shown: int = 5) -> list[str]:
    """One phrase per kind of mismatch, naming the first ``shown`` tensors of each."""
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:shown])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:shown])}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape: {', '.join(wrong[:shown])}")
    return problems


def load_matching(
    module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module``; every module weight must be present with the right shape.

    Keys starting with ``ignore_prefixes`` (a classifier the backbone dropped) are skipped.
    """
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing, unexpected, reshaped = state_mismatch(own, state)
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped]
    problems = mismatch_problems(missing, unexpected, wrong, shown=3)
    if problems:
        raise PolymodalError(f"pretrained weights {source} do not fit: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def download_failed(what: str, exc: Exception, cache: str | None = None) -> PolymodalError:
    """The error for ``pretrained: true`` when the library could not fetch ``what``'s weights,
    neither from its local ``cache`` (where it keeps downloaded weights) nor from the network."""
    first = first_line(exc)
    where = f" the library's local cache ({cache}) or" if cache else ""
    return PolymodalError(
        f"pretrained: true could not fetch the weights of {what} ({type(exc).__name__}: {first})."
        f" Offline? pretrained: true reads{where} a download: fill that cache where a network is"
        " available, or download the weights and set pretrained: path/to/weights.safetensors")
