"""Signals know their tensor's layout: how to pool it, make tokens of it, and spread a
per-feature vector over it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from polymodal.plugin import FeatureMap, Sequence, Signal, Tokens, Vector

#: signal, a tensor carrying it, its pooled vector, its tokens, how a per-feature vector spreads
CASES = {
    "vector": (Vector(4), torch.arange(8.0).view(2, 4), lambda x: x, lambda x: x[:, None, :],
               lambda v: v),
    "feature_map": (FeatureMap(4), torch.randn(2, 4, 3, 5), lambda x: x.mean(dim=(2, 3)),
                    lambda x: x.permute(0, 2, 3, 1).reshape(2, 15, 4), lambda v: v[:, :, None, None]),
    "tokens": (Tokens(4), torch.randn(2, 7, 4), lambda x: x.mean(dim=1), lambda x: x,
               lambda v: v[:, None, :]),
    "sequence": (Sequence(4), torch.randn(2, 4, 11), lambda x: x.mean(dim=2),
                 lambda x: x.permute(0, 2, 1), lambda v: v[:, :, None]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_kind_pools_tokenises_and_broadcasts_its_own_layout(case):
    signal, x, pooled, tokens, spread = CASES[case]
    assert signal.shape_problem(tuple(x.shape)) is None
    assert signal.pool(x).shape == (2, signal.width)
    assert torch.allclose(signal.pool(x), pooled(x))
    assert signal.to_tokens(x).shape[::2] == (2, signal.width)
    assert torch.equal(signal.to_tokens(x), tokens(x))
    v = torch.randn(2, signal.width)
    assert torch.equal(x * signal.broadcast(v), x * spread(v))
    # Pooling is the mean of the tokens, for every kind.
    assert torch.allclose(signal.pool(x), signal.to_tokens(x).mean(dim=1), atol=1e-6)


def test_a_signal_subclass_that_lacks_the_tensor_methods_says_so_by_name():
    class Graph(Signal):
        def describe(self) -> str:
            return "a graph"

    graph = Graph()
    for call, member in [(lambda: graph.pool(torch.zeros(1)), "pool"),
                         (lambda: graph.to_tokens(torch.zeros(1)), "to_tokens"),
                         (lambda: graph.broadcast(torch.zeros(1)), "broadcast"),
                         (lambda: graph.width, "width")]:
        with pytest.raises(NotImplementedError, match=f"^signal Graph does not implement {member}"):
            call()


def test_the_signals_module_imports_no_torch():
    code = ("import sys, polymodal._signals\n"
            "print([m for m in sys.modules if m.split('.')[0] == 'torch'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
