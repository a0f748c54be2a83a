"""The notes demo table: a claim photo, its record and a short free-text note a row.

Whether a claim goes to ``review`` or is ``approve``d depends on all three: the photo (a red
mark means damage), the record (larger amounts are riskier) and phrases in the adjuster's note
("water damage in the basement" raises the risk, "only a minor scratch" lowers it; most of the
note is filler that says nothing). Also trains a WordPiece tokenizer on the notes, with the
``tokenizers`` library, as a stand-in for a pretrained model's tokenizer (nothing is downloaded).

    python make_notes.py OUT [--rows 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image

RAISING = ["water damage in the basement", "the roof was leaking for weeks",
           "smoke smell in every room", "the ceiling collapsed"]
LOWERING = ["only a minor scratch", "no visible damage", "cosmetic wear only",
            "the customer fixed it already"]
FILLER = ["customer called on monday", "adjuster visited the site", "photos are attached",
          "policy renewed last year", "reported by the tenant", "second call about the claim",
          "the neighbour confirmed the date", "invoice requested"]
REGIONS = ["north", "south", "east", "west"]
IMAGE_SIZE = 32
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _note(rng: random.Random) -> tuple[str, float]:
    """A note of filler sentences, most with one phrase that moves the risk, and its effect."""
    sentences = rng.sample(FILLER, rng.randint(1, 3))
    draw = rng.random()
    effect = 0.0
    if draw < 0.35:
        sentences.append(rng.choice(RAISING))
        effect = 1.0
    elif draw < 0.7:
        sentences.append(rng.choice(LOWERING))
        effect = -1.0
    rng.shuffle(sentences)
    return ". ".join(sentences).capitalize() + ".", effect


def _photo(rng: np.random.Generator, damaged: bool) -> np.ndarray:
    """A noisy grey photo with a mark: red where damaged, green where not."""
    image = rng.normal(120, 25, (IMAGE_SIZE, IMAGE_SIZE, 3))
    top, left = rng.integers(2, IMAGE_SIZE - 14, size=2)
    colour = (200, 40, 40) if damaged else (40, 170, 60)
    image[top:top + 12, left:left + 12] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(out: Path, rows: int = 400, seed: int = 0) -> Path:
    """Write ``out/notes.csv`` and its photos (``out/photos``); return the table's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "photos").mkdir(exist_ok=True)
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    table = out / "notes.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "amount", "age", "region", "note", "decision"])
        for row in range(rows):
            damaged = rng.random() < 0.5
            photo = f"photos/{row:05d}.png"
            Image.fromarray(_photo(nprng, damaged)).save(out / photo)
            amount = float(np.exp(nprng.normal(7.5, 0.8)))
            note, effect = _note(rng)
            logit = 1.6 * (1 if damaged else -1) + 1.2 * (np.log(amount) - 7.5) / 0.8 \
                + 1.8 * effect + nprng.normal(0, 0.6)
            writer.writerow([photo, round(amount, 2), rng.randint(1, 40), rng.choice(REGIONS),
                             note, "review" if logit > 0 else "approve"])
    return table


def train_tokenizer(texts: list[str], folder: Path, vocab_size: int = 300) -> Path:
    """A BERT-style WordPiece tokenizer trained on ``texts``, saved as ``folder/tokenizer.json``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def notes_of(table: Path) -> list[str]:
    with table.open(newline="", encoding="utf-8") as handle:
        return [row["note"] for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Folder for the table, photos and tokenizer.")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = generate(args.out, args.rows, args.seed)
    train_tokenizer(notes_of(table), args.out / "tokenizer")
    print(f"wrote {table} and {args.out / 'tokenizer' / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
