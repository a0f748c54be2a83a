"""The `tabular` adapter: categories, numbers, NaN, numerical embeddings, outputs."""

from __future__ import annotations

import math

import pytest
import torch

import polymodal
from polymodal_plugins.tabular import default_embedding_dim
from builtin_helpers import TINY_TIMM, spec_error


def table_spec(**adapter) -> dict:
    adapter = {"type": "tabular", "categorical": {"make": 4}, "numerical": ["age", "km"],
               **adapter}
    spec = {"inputs": {"t": {"adapter": adapter}}, "heads": {"y": {"type": "regression"}}}
    if adapter.get("output", "vector") != "vector":
        spec["fusion"] = {"type": "attention", "dim": 8, "heads": 1}  # heads take vectors
    return spec


def adapter_of(**options):
    return polymodal.build(table_spec(**options)).adapters["t"].eval()


def test_unseen_and_missing_categories_use_reserved_rows():
    adapter = adapter_of(numerical=[])
    rows = adapter.embeddings["make"].weight
    assert rows.shape[0] == 4 + 2
    out = adapter({"make": torch.tensor([2, 4, 99, -7, -1])})
    assert torch.equal(out[0], rows[2])
    assert torch.equal(out[1], rows[4]) and torch.equal(out[2], rows[4])  # unknown
    assert torch.equal(out[3], rows[4])  # any other negative id is unknown too
    assert torch.equal(out[4], rows[5])  # -1: missing
    as_float = adapter({"make": torch.tensor([float("nan"), 1.0])})
    assert torch.equal(as_float[0], rows[5]) and torch.equal(as_float[1], rows[1])


def test_embedding_width_rule_and_override():
    assert [default_embedding_dim(n) for n in (2, 10, 100, 100_000)] == [2, 6, 21, 50]
    adapter = adapter_of(categorical={"make": 100, "color": 7}, numerical=[],
                         embedding_dims={"color": 3})
    assert adapter.embeddings["make"].embedding_dim == 21
    assert adapter.embeddings["color"].embedding_dim == 3


def test_numbers_are_standardised_and_nan_imputed_and_flagged(roundtrip):
    model = polymodal.build(table_spec(categorical={}))
    adapter = model.adapters["t"]
    adapter.num_mean.copy_(torch.tensor([40.0, 1000.0]))
    adapter.num_std.copy_(torch.tensor([10.0, 500.0]))
    out = adapter({"age": torch.tensor([50.0, float("nan")]), "km": torch.tensor([0.0, 2000.0])})
    # per column: standardised value, missing flag
    assert torch.allclose(out, torch.tensor([[1.0, 0.0, -2.0, 0.0], [0.0, 1.0, 2.0, 0.0]]))
    loaded = roundtrip(model)
    assert torch.equal(loaded.adapters["t"].num_std, adapter.num_std)


def test_nan_policy_error_names_column_and_row():
    adapter = adapter_of(nan="error")
    assert adapter.config.vector_width() == 3 + 2  # no flags under `error`
    with pytest.raises(polymodal.DataError, match=r"NaN in numerical column 'km' \(row 1\)"):
        adapter({"make": torch.tensor([0, 1]), "age": torch.tensor([1.0, 2.0]),
                 "km": torch.tensor([1.0, float("nan")])})


def test_missing_columns_and_ragged_columns_are_data_errors():
    adapter = adapter_of()
    with pytest.raises(polymodal.DataError, match="missing column"):
        adapter({"make": torch.tensor([0])})
    with pytest.raises(polymodal.DataError, match="different lengths"):
        adapter({"make": torch.tensor([0, 1]), "age": torch.tensor([1.0]),
                 "km": torch.tensor([1.0])})


def test_piecewise_linear_encoding_matches_the_definition():
    adapter = adapter_of(categorical={}, numerical=["x"], numerical_embedding="piecewise_linear",
                         bins=4, missing_indicators=False)
    emb = adapter.numerical_embedding
    emb.bin_edges.copy_(torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]))
    values = torch.tensor([[-1.0], [1.5], [3.25], [6.0]])
    expected = torch.tensor([
        [-1.0, 0.0, 0.0, 0.0],   # below the first edge: first bin open
        [1.0, 0.5, 0.0, 0.0],
        [1.0, 1.0, 1.0, 0.25],
        [1.0, 1.0, 1.0, 3.0],    # beyond the last edge: last bin open
    ])
    assert torch.allclose(emb.encode(values).squeeze(1), expected)
    out = adapter({"x": values.squeeze(1)})
    assert torch.allclose(out, expected @ emb.weight[0] + emb.bias[0], atol=1e-6)


def test_default_bins_are_normal_quantiles():
    adapter = adapter_of(categorical={}, numerical=["x"], numerical_embedding="piecewise_linear",
                         bins=4)
    inner = adapter.numerical_embedding.bin_edges[0, 1:-1]
    assert torch.allclose(inner, torch.tensor([-0.6745, 0.0, 0.6745]), atol=1e-4)



def test_training_on_a_table_puts_each_columns_quantiles_into_the_bins(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    skewed = rng.exponential(size=200)  # far from normal: the default edges would waste bins
    table = {"x": skewed.tolist(), "z": [1.0, 2.0] * 100, "y": rng.normal(size=200).tolist()}
    spec = {"inputs": {"t": {"adapter": {"type": "tabular", "numerical": ["x", "z"],
                                         "numerical_embedding": "piecewise_linear", "bins": 4}}},
            "heads": {"y": {"type": "regression"}},
            "training": {"epochs": 1, "val_fraction": 0.0, "lr": 1e-9}}
    result = polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False)
    edges = polymodal.load(tmp_path / "m.safetensors").adapters["t"].numerical_embedding.bin_edges
    standard = (skewed - skewed.mean()) / skewed.std()
    expected = np.quantile(standard, [0, 0.25, 0.5, 0.75, 1.0])
    assert torch.allclose(edges[0], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    # a column of two values still gets bins of some width, in order
    assert bool((edges[1][1:] > edges[1][:-1]).all())
    assert result.model.fitted_state["inputs"]["t"]["bin_edges"][0] == pytest.approx(expected)

def test_periodic_embedding_matches_the_definition():
    adapter = adapter_of(categorical={}, numerical=["x"], numerical_embedding="periodic",
                         frequencies=3, numerical_dim=5, missing_indicators=False)
    emb = adapter.numerical_embedding
    x = torch.tensor([0.3, -1.2])
    angles = 2 * math.pi * x[:, None] * emb.frequencies[0]
    features = torch.cat([angles.sin(), angles.cos()], dim=1)
    expected = torch.relu(features @ emb.weight[0] + emb.bias[0])
    assert torch.allclose(adapter({"x": x}), expected, atol=1e-6)
    assert adapter.config.gives() == polymodal.plugin.Vector(5)


def test_missing_flag_adds_a_learned_vector_to_embeddings():
    adapter = adapter_of(categorical={}, numerical=["x"], numerical_embedding="linear")
    emb = adapter.numerical_embedding
    with torch.no_grad():
        emb.missing.normal_()
    out = adapter({"x": torch.tensor([0.0, float("nan")])})
    assert torch.allclose(out[1] - out[0], emb.missing[0])


@pytest.mark.parametrize("embedding", [None, "linear", "piecewise_linear", "periodic"])
def test_tokens_give_one_token_per_column(embedding):
    adapter = adapter_of(output="tokens", token_dim=8, numerical_embedding=embedding)
    out = adapter({"make": torch.tensor([0, 1, 2]), "age": torch.randn(3), "km": torch.randn(3)})
    assert out.shape == (3, 3, 8)
    out.sum().backward()
    assert adapter.numerical_embedding.weight.grad is not None
    assert adapter.embeddings["make"].weight.grad is not None


@pytest.mark.parametrize("options, where, words", [
    ({"categorical": {}, "numerical": []}, "inputs.t.adapter", "at least one"),
    ({"numerical": ["make"]}, "inputs.t.adapter", "both categorical and numerical"),
    ({"embedding_dims": {"colour": 3}}, "inputs.t.adapter", "not categorical: ['colour']"),
    ({"output": "tokens", "project_to": 3}, "inputs.t.adapter", "project_to applies"),
    ({"nan": "drop"}, "inputs.t.adapter.nan", "impute"),
    ({"numerical_embedding": "ple"}, "inputs.t.adapter.numerical_embedding", "piecewise_linear"),
    ({"bins": 1}, "inputs.t.adapter.bins", "greater than or equal to 2"),
])
def test_bad_options_name_their_place(options, where, words):
    message = spec_error(table_spec(**options))
    assert message.startswith(where + ":") and words in message, message


def test_map_into_a_shared_image_backbone_like_seed_two():
    """Seed article 2's mixed example: a table projected to the backbone's channels as a 1x1
    map, through the same backbone as the images, each with its own head."""
    spec = {
        "inputs": {
            "image": {"adapter": {"type": "image", "channels": 3}, "backbone": "base"},
            "table": {"adapter": {"type": "tabular", "numerical": ["a", "b", "c", "d"],
                                  "missing_indicators": False, "output": "map",
                                  "project_to": 3},
                      "backbone": "base"},
        },
        "backbones": {"base": dict(TINY_TIMM)},
        "heads": {"image_y": {"type": "classification", "classes": 5, "inputs": ["image"]},
                  "table_y": {"type": "classification", "classes": 2, "inputs": ["table"]}},
    }
    model = polymodal.build(spec).eval()
    x = torch.randn(3, 4)
    out = model({"image": torch.randn(3, 3, 32, 32),
                 "table": {c: x[:, i] for i, c in enumerate("abcd")}})
    projection = model.adapters["table"].projection  # the seed's TabularProjection
    reference = model.backbones["base"](projection(x).unsqueeze(-1).unsqueeze(-1))
    expected = model.heads["table_y"](reference)
    assert torch.allclose(out["table_y"], expected, atol=1e-6)
    assert out["image_y"].shape == (3, 5)


def test_map_without_projection_says_how_to_fix():
    spec = table_spec(output="map")
    spec["inputs"]["t"]["backbone"] = dict(TINY_TIMM)
    message = spec_error(spec)
    assert "inputs.t.adapter: gives a feature map of 7 channels" in message
    assert "set project_to: 3" in message


@pytest.mark.parametrize("embedding", [None, "piecewise_linear", "periodic"])
def test_save_load_gives_the_same_outputs(embedding, roundtrip):
    model = polymodal.build(table_spec(numerical_embedding=embedding)).eval()
    loaded = roundtrip(model)
    batch = {"t": {"make": torch.tensor([0, 5]), "age": torch.tensor([1.0, float("nan")]),
                   "km": torch.tensor([2.0, 3.0])}}
    assert torch.allclose(model(batch)["y"], loaded(batch)["y"], atol=1e-6)
