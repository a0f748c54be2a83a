"""What the note adds: `polymodal cv --compare` of photo + record + note against photo + record
and against the note alone, on the generated notes table (make_notes.py), the same folds for
all three, with paired differences.

The note's encoder is a small BERT (2 layers, hidden 32) initialised randomly, and its tokenizer
a WordPiece tokenizer trained on the notes: nothing is downloaded. Prints the machine (CPU
capability, threads), the cv table and each spec's wall time per epoch (training and the
per-epoch validation of each fold, averaged over folds). The figures of the package README come
from this script; run it alone on the machine (it takes a few minutes on two cores).

    python compare.py [--out runs/notes-compare] [--rows 600] [--folds 5] [--epochs 20] [--threads N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_notes  # noqa: E402 - beside this script

ENCODER = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}


def specs(vocabulary: int, epochs: int, threads: int | None = None) -> dict[str, dict]:
    """The three specs compared, by file name: the fused one first."""
    photo = {"adapter": {"type": "image", "channels": 3},
             "backbone": {"type": "timm", "model": "resnet10t"}}
    record = {"adapter": {"type": "tabular", "numerical": ["amount", "age"],
                          "categorical": ["region"]}}
    note = {"adapter": {"type": "text", "tokenizer": "tokenizer", "max_length": 32},
            "backbone": {"type": "transformers", "config": {**ENCODER, "vocab_size": vocabulary},
                         "pretrained": False, "output": "vector", "pooling": "mean"}}
    head = {"decision": {"type": "classification", "classes": ["approve", "review"]}}
    training = {"epochs": epochs, "batch_size": 32, "lr": 0.005, "seed": 0,
                **({"threads": threads} if threads else {})}

    def spec(name: str, inputs: dict) -> dict:
        fused = {"fusion": {"type": "concat", "hidden": [32]}} if len(inputs) > 1 else {}
        return {"name": name, "inputs": inputs, **fused, "heads": head, "training": training}

    return {"photo_record_note.yaml": spec("photo_record_note",
                                           {"photo": photo, "record": record, "note": note}),
            "photo_record.yaml": spec("photo_record", {"photo": photo, "record": record}),
            "note.yaml": spec("note", {"note": note})}


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
            f" torch {torch.__version__} with {torch.get_num_threads()} threads, CPU capability"
            f" {torch.backends.cpu.get_cpu_capability()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/notes-compare"))
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each run (training.threads); default: torch's.")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes: only that it runs.")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.folds, args.epochs = 40, 2, 1
    out = args.out
    if (out / "cv").exists():
        shutil.rmtree(out / "cv")  # a rerun replaces the last one's report
    table = make_notes.generate(out, args.rows, seed=0)
    tokenizer = make_notes.train_tokenizer(make_notes.notes_of(table), out / "tokenizer")
    from tokenizers import Tokenizer

    vocabulary = Tokenizer.from_file(str(tokenizer / "tokenizer.json")).get_vocab_size()
    written = specs(vocabulary, args.epochs, args.threads)
    for name, spec in written.items():
        (out / name).write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    first, *others = written
    command = [sys.executable, "-m", "polymodal", "cv", first, "--data", table.name,
               "--folds", str(args.folds), "-o", "cv", "--quiet"]
    for other in others:
        command += ["--compare", other]
    print(f"machine: {machine()}")
    print(f"data: {args.rows} rows; {args.folds} folds; {args.epochs} epochs a fold;"
          f" training.threads {args.threads or 'default'}")
    print("$ polymodal " + " ".join(command[3:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=out, check=True)
    report = json.loads((out / "cv" / "report.json").read_text(encoding="utf-8"))
    print(f"\nwall time {time.perf_counter() - started:.0f} s; per epoch (training rows"
          f" {args.rows * (args.folds - 1) // args.folds}, validation included):")
    for name, scores in report["specs"].items():
        per_epoch = scores["seconds"] / (args.folds * args.epochs)
        print(f"  {name}: {per_epoch:.2f} s")


if __name__ == "__main__":
    main()
