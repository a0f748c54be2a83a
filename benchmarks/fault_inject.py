"""Kill polymodal mid-write, again and again, and check what it leaves.

Four operations, each killed ``--trials`` times at a random moment of its run (SIGKILL, SIGTERM
or SIGINT, drawn at random): ``save`` (``polymodal.save`` of a 10M-parameter model), ``build``
(``polymodal build``), ``train`` (``polymodal train``) and ``predict`` (``polymodal predict -o``).
After each kill it checks:

- the target is the old file or the new one, whole: byte for byte one of the two for save and
  predict, a loadable model of the old or the new spec for build, a loadable model and a
  readable checkpoint for train;
- the next run (the same command; ``--resume`` for train) succeeds and leaves no temporary or
  lock file behind, whatever the killed run left;
- train: the resumed run ends with the bytes of an uninterrupted run (model file and the
  checkpoint's weights) and the same training losses.

Each operation runs in a child forked from this process, which has imported torch once, so a
trial costs the operation, not an interpreter start. The moment of each kill is drawn uniformly
over the operation's uninterrupted duration. Not part of the test suite (minutes, not seconds).

    python benchmarks/fault_inject.py [--trials 24] [--seed 0] [--keep DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked children and threads do not mix

import torch  # noqa: E402
import yaml  # noqa: E402

import polymodal  # noqa: E402
from polymodal._cli import main as cli  # noqa: E402
from polymodal._modelfile import read_metadata  # noqa: E402
from polymodal._temporaries import is_temp  # noqa: E402
from polymodal._training.checkpoint import Checkpoint  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_table  # noqa: E402

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
#: Model and table sizes; --smoke makes them tiny (the check that the script runs, in seconds).
SIZES = {"save_hidden": 1800, "build_hidden": (1200, 1400), "predict_rows": 600}


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def model_digest(path: Path) -> str | None:
    """What a model file holds: its metadata and tensors (a file's bytes can differ between
    processes that write the same model: the writer orders the header as it likes)."""
    if not path.exists():
        return None
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as handle:
        digest.update(json.dumps(handle.metadata(), sort_keys=True).encode())
        for key in sorted(handle.keys()):
            digest.update(key.encode())
            digest.update(handle.get_tensor(key).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary or lock files anywhere under ``folder``: polymodal's naming, or any ``.tmp*``
    a writer might leave."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")
                  if is_temp(p) or p.name.endswith("-lock") or p.name.startswith(".tmp"))


def in_child(work: Callable[[], int | None]) -> int:
    """Fork; run ``work`` in the child, quiet, and exit with its code. Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        code = work() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:  # SIGINT in an operation called directly, as the CLI ends on it
        code = 130
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 71
    finally:
        os._exit(code)


def _status(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def finished(pid: int) -> int:
    """The exit status of child ``pid``: its code, or minus the signal that ended it."""
    return _status(os.waitpid(pid, 0)[1])


def run(work: Callable[[], int | None]) -> tuple[int, float]:
    started = time.perf_counter()
    code = finished(in_child(work))
    return code, time.perf_counter() - started


def killed(work: Callable[[], int | None], after: float, how: str) -> tuple[int, bool]:
    """Run ``work`` and send it signal ``how`` ``after`` seconds in; (status, whether it was
    still running when the signal came)."""
    pid = in_child(work)
    time.sleep(after)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:  # it had ended already
        return _status(status), False
    os.kill(pid, SIGNALS[how])
    return finished(pid), True


@dataclass
class Tally:
    trials: int = 0
    hit_running: int = 0  # the signal came while the operation ran
    signals: Counter = field(default_factory=Counter)
    target_after_kill: Counter = field(default_factory=Counter)  # old / new / absent
    temps_after_kill: int = 0  # trials where the kill left a temporary file (SIGKILL mid-write)
    locks_after_kill: int = 0  # ... a lock file (SIGKILL of a train or predict)
    left_after_next: int = 0  # ... and the next run did not remove them (must be 0)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, trial: int, what: str) -> None:
        self.failures.append(f"trial {trial}: {what}")


# -- the four operations -----------------------------------------------------------------


def big_spec(name: str, hidden: int) -> dict:
    return {"name": name,
            "inputs": {"row": {"adapter": {"type": "tabular", "numerical": ["a", "b"]},
                               "backbone": {"type": "mlp", "hidden": [hidden, hidden, hidden]}}},
            "heads": {"y": {"type": "regression"}}}


def train_spec(epochs: int) -> dict:
    return {"name": "fault",
            "inputs": {"photo": {"adapter": {"type": "image", "channels": 3, "column": "photo",
                                             "augment": {"hflip": True}}},
                       "report": {"adapter": {"type": "tabular", "categorical": ["make", "color"],
                                              "numerical": ["age", "mileage"]},
                                  "backbone": {"type": "mlp", "hidden": [16]}}},
            "fusion": {"type": "concat", "hidden": [32]},
            "heads": {"label": {"type": "classification", "target": "label"}},
            "training": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "val_fraction": 0.25}}


class Operation:
    name = ""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def prepare(self) -> None: ...
    def work(self, trial: int) -> Callable[[], int | None]: ...
    def next_work(self, trial: int) -> Callable[[], int | None]:
        return self.work(trial)
    def check_after_kill(self, trial: int, tally: Tally) -> None: ...
    def check_after_next(self, trial: int, tally: Tally) -> None: ...


class Save(Operation):
    """``polymodal.save`` of model A or B over the file holding the other."""

    name = "save"

    def prepare(self) -> None:
        torch.manual_seed(0)
        spec = big_spec("fault_save", SIZES["save_hidden"])  # about 10M parameters: a 40 MB file
        self.models = [polymodal.build(spec), polymodal.build(spec)]
        self.target = self.folder / "m.safetensors"
        self.hashes = []
        for model in self.models:
            polymodal.save(model, self.target)
            self.hashes.append(model_digest(self.target))
        assert self.hashes[0] != self.hashes[1]

    def work(self, trial: int):
        def save() -> None:
            polymodal.save(self.models[trial % 2], self.target)
        return save

    def check_after_kill(self, trial: int, tally: Tally) -> None:
        now, old, new = model_digest(self.target), self.hashes[(trial + 1) % 2], self.hashes[trial % 2]
        tally.target_after_kill["new" if now == new else "old" if now == old else "other"] += 1
        if now not in (old, new):
            tally.fail(trial, "the model file is neither the old nor the new one")
        elif polymodal.load(self.target) is None:
            tally.fail(trial, "the model file does not load")

    def check_after_next(self, trial: int, tally: Tally) -> None:
        if model_digest(self.target) != self.hashes[trial % 2]:
            tally.fail(trial, "the next save did not write the new model")


class Build(Operation):
    """``polymodal build`` of spec A or B over the file built from the other."""

    name = "build"

    def prepare(self) -> None:
        self.specs = []
        for name, hidden in zip(("fault_a", "fault_b"), SIZES["build_hidden"]):
            path = self.folder / f"{name}.yaml"
            path.write_text(yaml.safe_dump(big_spec(name, hidden)))
            self.specs.append(path)
        self.target = self.folder / "m.safetensors"
        code, _ = run(lambda: cli(["build", str(self.specs[1]), "-o", str(self.target)]))
        assert code == 0

    def work(self, trial: int):
        return lambda: cli(["build", str(self.specs[trial % 2]), "-o", str(self.target)])

    def _built_from(self) -> str | None:
        if not self.target.exists():
            return None
        return json.loads(read_metadata(self.target)["polymodal.spec"])["name"]

    def check_after_kill(self, trial: int, tally: Tally) -> None:
        old, new = f"fault_{'ab'[(trial + 1) % 2]}", f"fault_{'ab'[trial % 2]}"
        built = self._built_from()
        tally.target_after_kill["new" if built == new else "old" if built == old else "other"] += 1
        if built not in (old, new):
            tally.fail(trial, f"the model file is of neither spec ({built})")
        else:
            polymodal.load(self.target)

    def check_after_next(self, trial: int, tally: Tally) -> None:
        if self._built_from() != f"fault_{'ab'[trial % 2]}":
            tally.fail(trial, "the next build did not write the new model")


class Predict(Operation):
    """``polymodal predict -o`` of table A or B over the predictions of the other."""

    name = "predict"

    def prepare(self) -> None:
        data = self.folder / "data"
        table = write_table(data, rows=SIZES["predict_rows"], size=16)
        spec = self.folder / "spec.yaml"
        spec.write_text(yaml.safe_dump(train_spec(epochs=1)))
        self.model = self.folder / "m.safetensors"
        code, _ = run(lambda: cli(["train", str(spec), "--data", str(table), "-o", str(self.model),
                                   "--quiet"]))
        assert code == 0
        lines = table.read_text().splitlines()
        self.tables = [table, data / "reversed.csv"]
        self.tables[1].write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
        self.target = self.folder / "pred.csv"
        self.hashes = []
        for t in self.tables:
            code, _ = run(lambda t=t: cli(["predict", str(self.model), "--data", str(t), "-o",
                                           str(self.target), "--batch-size", "32"]))
            assert code == 0
            self.hashes.append(digest(self.target))
        assert self.hashes[0] != self.hashes[1]

    def work(self, trial: int):
        return lambda: cli(["predict", str(self.model), "--data", str(self.tables[trial % 2]), "-o",
                            str(self.target), "--batch-size", "32"])

    def check_after_kill(self, trial: int, tally: Tally) -> None:
        now, old, new = digest(self.target), self.hashes[(trial + 1) % 2], self.hashes[trial % 2]
        tally.target_after_kill["new" if now == new else "old" if now == old else "other"] += 1
        if now not in (old, new):
            tally.fail(trial, "the predictions file is neither the old nor the new one")

    def check_after_next(self, trial: int, tally: Tally) -> None:
        if digest(self.target) != self.hashes[trial % 2]:
            tally.fail(trial, "the next predict did not write the new predictions")


class Train(Operation):
    """``polymodal train``, killed, then ``--resume``d: the end must be an uninterrupted run's."""

    name = "train"

    def prepare(self) -> None:
        data = self.folder / "data"
        self.table = write_table(data, rows=40, size=16)
        self.spec = self.folder / "spec.yaml"
        self.spec.write_text(yaml.safe_dump(train_spec(epochs=3)))
        reference = self.folder / "reference.safetensors"
        code, _ = run(lambda: cli(["train", str(self.spec), "--data", str(self.table), "-o",
                                   str(reference), "--quiet"]))
        assert code == 0
        self.model_hash = model_digest(reference)
        run_dir = self.folder / "reference.run"
        self.checkpoint_weights = Checkpoint.read(run_dir / "checkpoint.pt").model
        self.losses = self._losses(run_dir)
        self.target = self.folder / "m.safetensors"
        self.run_dir = self.folder / "m.run"

    @staticmethod
    def _losses(run_dir: Path) -> list[float]:
        return [r["train_loss"] for r in json.loads((run_dir / "metrics.json").read_text())]

    def _train(self, *extra: str):
        return lambda: cli(["train", str(self.spec), "--data", str(self.table), "-o",
                            str(self.target), "--quiet", *extra])

    def work(self, trial: int):
        # each trial a fresh run: the kill lands anywhere from reading the table to the plot
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.target.unlink(missing_ok=True)
        return self._train()

    def next_work(self, trial: int):
        return self._train("--resume")

    def check_after_kill(self, trial: int, tally: Tally) -> None:
        tally.target_after_kill["saved" if self.target.exists() else "absent"] += 1
        if self.target.exists():
            polymodal.load(self.target)  # whichever epoch it holds, it is whole
        checkpoint = self.run_dir / "checkpoint.pt"
        if checkpoint.exists():
            Checkpoint.read(checkpoint)
            tally.target_after_kill["checkpoint"] += 1

    def check_after_next(self, trial: int, tally: Tally) -> None:
        if model_digest(self.target) != self.model_hash:
            tally.fail(trial, "the resumed run's model file differs from an uninterrupted run's")
        weights = Checkpoint.read(self.run_dir / "checkpoint.pt").model
        if not all(torch.equal(weights[k], v) for k, v in self.checkpoint_weights.items()):
            tally.fail(trial, "the resumed run's last weights differ from an uninterrupted run's")
        if self._losses(self.run_dir) != self.losses:
            tally.fail(trial, "the resumed run's training losses differ")


# -- the loop ----------------------------------------------------------------------------


def warm_up(folder: Path) -> None:
    """Do here, once, what every operation does the first time in a process (import plugins,
    timm and matplotlib, load fonts), so that a forked child spends its time on the operation."""
    table = write_table(folder, rows=16, size=16)
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(train_spec(epochs=1)))
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(["train", str(spec), "--data", str(table), "-o", str(folder / "m.safetensors"),
                    "--quiet"]) == 0
    polymodal.build(big_spec("warm", 8))


def trial_loop(op: Operation, trials: int, rng: random.Random) -> Tally:
    tally = Tally()
    started = time.perf_counter()
    op.prepare()
    # how long an uninterrupted run takes: the kills are spread over it
    durations = []
    for i in range(2):
        work = op.work(i)
        code, seconds = run(work)
        assert code == 0, f"{op.name} failed uninterrupted ({code})"
        durations.append(seconds)
    span = max(durations)
    for trial in range(trials):
        how = rng.choice(list(SIGNALS))
        after = rng.uniform(0.0, span)
        work = op.work(trial)
        status, running = killed(work, after, how)
        tally.trials += 1
        tally.signals[how] += 1
        tally.hit_running += running
        # 0: it ended between the look and the signal
        if running and status not in (-SIGNALS[how], 0, 1, 130):
            tally.fail(trial, f"killed by SIG{how}, it ended with status {status}")
        try:
            op.check_after_kill(trial, tally)
        except Exception as exc:  # noqa: BLE001
            tally.fail(trial, f"after SIG{how} at {after:.2f} s: {type(exc).__name__}: {exc}")
        left = leftovers(op.folder)
        tally.temps_after_kill += any(not name.endswith("-lock") for name in left)
        tally.locks_after_kill += any(name.endswith("-lock") for name in left)
        code, _ = run(op.next_work(trial))
        if code != 0:
            tally.fail(trial, f"the next run after SIG{how} failed ({code})")
            continue
        left = leftovers(op.folder)
        if left:
            tally.left_after_next += 1
            tally.fail(trial, f"left after the next run: {', '.join(left)}")
        try:
            op.check_after_next(trial, tally)
        except Exception as exc:  # noqa: BLE001
            tally.fail(trial, f"after the next run: {type(exc).__name__}: {exc}")
    tally.seconds = time.perf_counter() - started
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="Kills per operation.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["save", "build", "train", "predict"], action="append")
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it.")
    parser.add_argument("--smoke", action="store_true", help="One kill per operation of tiny"
                        " models and tables: checks that the script runs, in seconds.")
    args = parser.parse_args()
    if args.smoke:
        args.trials = 1
        SIZES.update(save_hidden=32, build_hidden=(32, 48), predict_rows=40)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        warm_up(root / "warm")
        operations = [cls(root / cls.name) for cls in (Save, Build, Predict, Train)
                      if not args.only or cls.name in args.only]
        tallies = {}
        for op in operations:
            with contextlib.redirect_stderr(io.StringIO()):  # sweep notes: counted, not shown
                tallies[op.name] = trial_loop(op, args.trials, rng)
            t = tallies[op.name]
            print(f"{op.name:8s} {t.trials} kills ({dict(t.signals)}), {t.hit_running} mid-run;"
                  f" target after the kill: {dict(t.target_after_kill)};"
                  f" kills leaving a temporary file {t.temps_after_kill}, a lock file"
                  f" {t.locks_after_kill}; left after the next run: {t.left_after_next};"
                  f" failures: {len(t.failures)};"
                  f" {t.seconds:.0f} s", flush=True)
            for failure in t.failures[:10]:
                print(f"    {failure}")
    failed = sum(len(t.failures) for t in tallies.values())
    print("all invariants held" if not failed else f"{failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
