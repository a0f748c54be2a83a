"""What a run says about rows that lack an input, before it trains.

Where the model takes some input as absent (``inputs.NAME.missing``), the run gives the rows of
each presence pattern (``photo + record: 420, record only: 180``), and notes what may hurt the
rows that lack an input: a pattern that few training rows have, or a fusion that never practises
predicting without an input (``modality_dropout: 0``) although the data lacks some.
"""

from __future__ import annotations

import numpy as np

from .._data.binding import Binding, presence_labels
from .._data.table import Table

#: A pattern with fewer training rows than this (or than RARE_SHARE of them) is noted as rare.
RARE_ROWS = 20
RARE_SHARE = 0.02


def pattern_counts(binding: Binding, table: Table) -> dict[str, int]:
    """Rows of ``table`` by presence pattern over the model's inputs, most first; empty where
    every row holds every input the model may lack."""
    held = binding.presence(table)
    if not held or all(m.all() for m in held.values()):
        return {}
    labels = presence_labels(list(binding.spec.inputs), held, len(table))
    kinds, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {str(kinds[i]): int(counts[i]) for i in order}


def presence_lines(binding: Binding, train: Table, other: Table) -> list[str]:
    """The line of presence patterns in the training rows, then notes (each ``note: ...``)."""
    counts = pattern_counts(binding, train)
    if not counts:
        return []
    total = len(train)
    lines = ["inputs held by the training rows: "
             + ", ".join(f"{kind}: {n}" for kind, n in counts.items())]
    rare = [f"{k!r}: {n} of {total}" for k, n in counts.items()
            if n < max(RARE_ROWS, RARE_SHARE * total)]
    unseen = [repr(k) for k in pattern_counts(binding, other) if k not in counts]
    if rare or unseen:
        said = "; ".join([*rare, *(f"{k}: only in the validation rows" for k in unseen)])
        lines.append(f"note: few training rows hold these inputs ({said}): the model learns little"
                     " of how to predict for such rows, and evaluate and cv report its metrics on"
                     " them apart; more such rows, or modality_dropout (fusion), give it more to"
                     " learn from")
    fusion = binding.spec.fusion
    if fusion is not None and fusion.modality_dropout == 0:
        lacking = {n: int((~m).sum()) for n, m in binding.presence(train).items() if (~m).any()}
        said = ", ".join(f"{n!r} in {k}" for n, k in lacking.items())
        lines.append(f"note: inputs are absent from some training rows ({said} of {total}) and"
                     " fusion.modality_dropout is 0: the model learns to predict without them"
                     " from those rows only (through the fusion's placeholder), which sufficed"
                     " where a tenth or more of the rows lack an input; a modality_dropout"
                     " (0.1-0.3) drops inputs of the other rows too, which can help rarer"
                     " patterns but cost the complete rows 0.03-0.09 balanced accuracy in our"
                     " benchmark: compare both with cv (docs/training.md, 'Rows that lack an"
                     " input')")
    return lines
