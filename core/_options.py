"""The ``training`` section of a spec: how a model is trained on a table.

Only Pydantic here, so a spec validates without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EarlyStopping(_Options):
    """Which metric picks the best epoch (the one saved), and when training stops early."""

    metric: str = Field("loss", description="`loss` (the validation loss over every head) or"
                        " `HEAD.METRIC`, e.g. `fraud.balanced_accuracy`, `price.rmse`.",
                        pattern=r"^(loss|[A-Za-z_][A-Za-z0-9_]*\.[a-z0-9_]+)$")
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="Whether lower or higher is better; auto: as the metric's head"
        " declares it (the loss: lower).")
    patience: PositiveInt | None = Field(
        None, description="Stop after this many epochs without improvement; null: never stop"
        " early (the best epoch is still what is saved).")


def checked_group_column(name: str | None) -> str | None:
    """``name`` as the column whose groups stay together, the one rule of ``train``, ``cv`` and
    ``tune``: a blank name is refused, not taken to mean no grouping (each row's group is then
    its value, spaces around it ignored)."""
    if name is not None and not name.strip():
        raise ValueError(f"{name!r}: name the column whose groups stay together, or leave it out")
    return name


class Track(_Options):
    """Where a run is recorded besides its own files: an experiment tracker (the package is
    installed with `pip install 'polymodal[mlflow]'` or `'polymodal[tensorboard]'`)."""

    to: Literal["mlflow", "tensorboard"] = Field(
        description="mlflow (a tracking server or a local store) or tensorboard (event files).")
    uri: str | None = Field(
        None, description="mlflow: the tracking URI (http://host:5000, sqlite:///runs.db);"
        " tensorboard: the log folder. Default: a local store beside the run folder"
        " (mlflow.db and mlartifacts/, or tensorboard/). A relative folder is read from the"
        " current folder.", min_length=1, max_length=2000)
    experiment: str | None = Field(
        None, description="mlflow only: the experiment the runs go to; default: the spec's"
        " name.", min_length=1, max_length=250)

    @model_validator(mode="after")
    def _check(self):
        if self.experiment is not None and self.to != "mlflow":
            raise ValueError("experiment is an option of mlflow only (tensorboard has none)")
        return self


class TrainingOptions(_Options):
    """How the model is trained: optimisation, schedule, precision, data split. Options that
    belong to one kind of input (augmentation) are options of that input's adapter."""

    epochs: PositiveInt = Field(10, description="Passes over the training rows.", le=100_000)
    batch_size: PositiveInt = Field(32, description="Rows per optimisation step (over all"
                                    " processes when data-parallel).", le=1_000_000)
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimiser.")
    lr: float = Field(1e-3, description="Learning rate.", gt=0, le=10)
    momentum: float = Field(0.9, description="Momentum (sgd only).", ge=0, lt=1)
    weight_decay: float = Field(1e-4, description="Weight decay (decoupled for adamw).", ge=0)
    schedule: Literal["none", "cosine", "onecycle"] = Field(
        "cosine", description="Learning-rate schedule over all steps.")
    backbone_lr: float | None = Field(
        None, description="Learning rate of the backbones, e.g. lower for pretrained ones;"
        " default: lr.", gt=0, le=10)
    freeze_backbones: bool = Field(False, description="Keep backbone weights fixed (until"
                                   " unfreeze_at).")
    unfreeze_at: PositiveInt | None = Field(
        None, description="Epoch (1-based) from which frozen backbones train too.")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping,
                                          description=EarlyStopping.__doc__)
    loss_weights: dict[str, float] = Field(
        default_factory=dict, description="Weight of each head's loss (head name -> weight;"
        " default 1).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision. auto: on a CUDA GPU bf16 where it runs bf16"
        " natively, else fp16; fp32 on a CPU. bf16 on a CPU with AVX512-BF16, AMX or ARM BF16"
        " is faster but not exactly repeatable (a step whose gradients are not finite is"
        " skipped and noted); without those instructions it is emulated and slower than fp32"
        " (a warning says so). fp16 needs a CUDA GPU.")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="Channels-last memory format for image batches and the model."
        " auto: on where the run trains on a CPU (faster convolutions there, at every"
        " precision) or in bf16/fp16 on a CUDA GPU; off in fp32 on a GPU.")
    compile: bool = Field(False, description="torch.compile the model (slow first steps).")
    seed: int = Field(0, description="Seed of initialisation, shuffling, augmentation and"
                      " dropout: the same seed gives the same model.", ge=0, lt=2**31)
    threads: PositiveInt | None = Field(
        None, description="Threads torch uses for CPU work during the run (torch.set_num_threads);"
        " default: torch's own choice (one per core, or OMP_NUM_THREADS).", le=4096)
    workers: Literal["auto"] | Annotated[int, Field(ge=0, le=256)] = Field(
        "auto", description="Data-loading worker processes (0: load in the training process)."
        " auto: none where the decoded rows are kept in memory (cache_mib) or where the run's"
        " threads take every core (they would only share the cores), else one per spare core"
        " (at most 4). Worker processes keep no decoded rows.")
    cache_mib: Literal["auto"] | Annotated[int, Field(ge=0, le=2**24)] = Field(
        "auto", description="Decoded rows (each input's encoded value, before augmentation)"
        " kept in memory from epoch to epoch, so each file is read and decoded once per run,"
        " when they fit in this many MiB. auto: half the memory available when the run starts;"
        " 0: never kept. The run's first lines say the decoded size and the choice.")
    val_fraction: float = Field(0.2, description="Fraction of rows held out for validation"
                                " when no validation table is given.", ge=0, lt=1)
    group_by: str | None = Field(
        None, description="Column whose groups (a patient, a site) stay on one side of the"
        " validation split.")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N.",
                        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    track: Track | None = Field(
        None, description="Record every epoch's metrics, the parameters and the files of the run"
        " in an experiment tracker too, e.g. `{to: mlflow, uri: 'http://localhost:5000'}`;"
        " `--track` on the command line overrides it. null: only the run's own files.")

    @field_validator("group_by")
    @classmethod
    def _names_a_column(cls, value: str | None) -> str | None:
        return checked_group_column(value)

    @model_validator(mode="before")
    @classmethod
    def _moved_options(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "augment" in data:
            raise ValueError(
                "`augment` is no longer a training option: augmentation belongs to the adapter"
                " that understands it. Move it into each image input's adapter, e.g."
                " inputs.photo.adapter: {type: image, augment: {hflip: true}}")
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.unfreeze_at is not None and not self.freeze_backbones:
            raise ValueError("unfreeze_at needs freeze_backbones: true")
        bad = {k: v for k, v in self.loss_weights.items() if v < 0}
        if bad:
            raise ValueError(f"loss_weights must be >= 0: {bad}")
        return self
