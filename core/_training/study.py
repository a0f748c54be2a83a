"""The Optuna side of a search: the study's storage, sampler and pruner, each trial's values
drawn from the spec's ``search`` section, the first trial set to the spec as written, and the
processes of a torchrun search kept in step (:class:`Ranks`).

Optuna is an optional dependency (``pip install 'polymodal[tune]'``), imported only here and
where a search writes its results.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import PolymodalError
from .._search import Choice, FloatRange, IntRange, label
from .._spec import ModelSpec
from . import distributed


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs: until its study has ``trials`` finished trials (or ``timeout``
    seconds have passed), in which ``storage`` (an Optuna RDB URL; default: the run folder's
    ``study.db``) and ``study`` (default: the spec's name), pruning bad trials or not, its
    sampler seeded or not, a running trial beating every ``heartbeat`` seconds."""

    trials: int
    storage: str | None = None
    study: str | None = None
    timeout: float | None = None
    pruning: bool = True
    sampler_seed: int | None = None
    heartbeat: int = 60


class TuneError(PolymodalError):
    """The study cannot be run: no Optuna, a bad storage URL, a study of another objective."""


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise TuneError("hyperparameter search needs Optuna: pip install 'polymodal[tune]'") from None
    # The run says what happens itself (a failed trial in one line, not a traceback).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


class Ranks:
    """Under torchrun every process trains each trial together; rank 0 alone talks to the study
    and shares with the others what to train and whether to stop."""

    def __init__(self, device: str):
        # The process group lives as long as the search: every trial's training joins it.
        self.context = distributed.start(device)

    @property
    def main(self) -> bool:
        return self.context.main

    def share(self, value: Any) -> Any:
        """Rank 0's ``value``, in every process."""
        if not self.context.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def _device(self) -> Any:
        return self.context.device if self.context.device.type == "cuda" else None

    def finish(self) -> None:
        if self.main:
            self.share(None)  # tells the other processes that the run is over
        distributed.stop(self.context)


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's value for each searched path."""
    values = {}
    for path, distribution in space.items():
        if isinstance(distribution, FloatRange):
            values[path] = trial.suggest_float(path, distribution.low, distribution.high,
                                               log=distribution.log, step=distribution.step)
        elif isinstance(distribution, IntRange):
            values[path] = trial.suggest_int(path, distribution.low, distribution.high,
                                             step=distribution.step, log=distribution.log)
        else:
            assert isinstance(distribution, Choice)
            stored = stored_choices(distribution)
            picked = trial.suggest_categorical(path, list(stored))
            values[path] = stored[picked]
    return values


def stored_choices(distribution: Choice) -> dict[Any, Any]:
    """Choices by what Optuna stores for them: numbers, text, booleans and null as they are;
    lists and mappings (or all of them, where they mix) as compact JSON text."""
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in distribution.choices):
        return {c: c for c in distribution.choices}
    return {label(c): c for c in distribution.choices}


def enqueue_baseline(study: Any, spec: ModelSpec, say: Callable[[str], None]) -> None:
    """Make the first trial of a new study the spec as written, where its values are in the
    search space."""
    if study.trials or study.user_attrs.get("baseline"):
        return  # (processes starting a study together may still both add it: harmless)
    study.set_user_attr("baseline", True)
    params, outside = {}, []
    for path, distribution in (spec.search or {}).items():
        value = current_value(spec, path)
        if isinstance(distribution, Choice):
            stored = {label(v): k for k, v in stored_choices(distribution).items()}
            if label(value) in stored:
                params[path] = stored[label(value)]
                continue
        elif _on_grid(value, distribution):
            params[path] = value
            continue
        outside.append(f"{path} = {label(value)}")
    if outside:
        say("the spec's own values are not all in the search space (" + "; ".join(outside)
            + "): no trial of the spec as written")
        return
    study.enqueue_trial(params, user_attrs={"baseline": True})


def _on_grid(value: Any, distribution: FloatRange | IntRange) -> bool:
    """Whether a range can draw ``value``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not distribution.low <= value <= distribution.high:
        return False
    if isinstance(distribution, IntRange):
        return float(value).is_integer() and (int(value) - distribution.low) % distribution.step == 0
    if distribution.step is None:
        return True
    steps = (value - distribution.low) / distribution.step
    return abs(steps - round(steps)) < 1e-9


def current_value(spec: ModelSpec, path: str) -> Any:
    """The value at ``path`` of the validated spec, as plain data."""
    from pydantic import BaseModel

    node: Any = spec
    for part in path.split("."):
        node = getattr(node, part) if isinstance(node, BaseModel) else node[part]
    if isinstance(node, BaseModel):
        return node.model_dump(mode="json", exclude_unset=True)
    return node


def finished_count(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def open_study(optuna: Any, search: SearchSettings, url: str, name: str, metric: str,
               higher: bool, by_fold: bool) -> Any:
    """The study ``name`` in the storage ``url`` (made where it is new), comparing trials by
    ``metric``; a study of another metric or direction is refused."""
    if "://" not in url:
        raise TuneError(f"--storage {url!r}: give an Optuna RDB URL, e.g. sqlite:///study.db,"
                        " postgresql://user@host/db or mysql://user@host/db")
    # SQLite waits up to a minute for a lock instead of 5 s: several processes share the file.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            with quiet(optuna):
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                                     **_heartbeat(optuna, search.heartbeat))
            break
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds
            # Processes started together race to create a new storage's tables: try again.
            if attempt == 2:
                raise TuneError(f"--storage {safe_url(url)}: cannot open the study storage"
                                f" ({type(exc).__name__}: {exc})") from None
            time.sleep(1 + attempt)
    # Steps below n_warmup_steps are not judged. Per epoch (steps 1, 2, ...) the first epoch
    # is too noisy to judge by (a warming-up schedule has barely begun); per fold (steps 1,
    # 2, ...) one fold is enough.
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1 if by_fold else 2)
              if search.pruning else optuna.pruners.NopPruner())
    direction = "maximize" if higher else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                load_if_exists=True, pruner=pruner)
    # A resumed study's sampler is seeded past the trials it has: the same seed again would
    # draw the values of its first trials again.
    seed = None if search.sampler_seed is None else search.sampler_seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    known = study.user_attrs.get("metric")
    if known is None:
        study.set_user_attr("metric", metric)
    elif known != metric or study.direction.name.lower() != direction:
        raise TuneError(f"study {name!r} in {safe_url(url)} compares trials by {known}"
                        f" ({study.direction.name.lower()}); this spec by {metric} ({direction})."
                        " Give another --study")
    return study


def _heartbeat(optuna: Any, seconds: int) -> dict[str, Any]:
    """Storage arguments that fail, then retry (twice), a trial whose process stopped beating."""
    storages = optuna.storages
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    arguments = {"heartbeat_interval": seconds, "grace_period": 2 * seconds}
    if retry is not None:  # Optuna 4.9 and later
        return {**arguments, "heartbeat_stale_trial_callback": retry(max_retry=2)}
    return {**arguments, "failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=2)}


@contextlib.contextmanager
def quiet(optuna: Any) -> Iterator[None]:
    """Without Optuna's warnings that heartbeats are an experimental feature."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def safe_url(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        rest = credentials.split(":", 1)[0] + ":***@" + host
    return scheme + sep + rest


def best_trial(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None

