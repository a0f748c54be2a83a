"""Built-in components against hand-written references of the seed articles' building blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import polymodal


class SeedTabularEncoder(nn.Module):
    """Seed article 1's tabular path: embeddings + numbers, Linear, ReLU, Linear."""

    def __init__(self, cardinalities, dims, numerical, hidden):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cardinalities, dims))
        self.fc1 = nn.Linear(sum(dims) + numerical, hidden)
        self.fc2 = nn.Linear(hidden, hidden // 2)

    def forward(self, cat, num):
        embedded = torch.cat([e(c) for e, c in zip(self.embeddings, cat.T)], dim=1)
        return self.fc2(F.relu(self.fc1(torch.cat([embedded, num], dim=1))))


def test_tabular_adapter_and_mlp_match_seed_one_tabular_encoder():
    spec = {"inputs": {"t": {
        "adapter": {"type": "tabular", "categorical": {"make": 40, "color": 12},
                    "embedding_dims": {"make": 8, "color": 4}, "numerical": ["age", "km"],
                    "missing_indicators": False},
        "backbone": {"type": "mlp", "hidden": [32, 16], "final_activation": False}}},
        "heads": {"y": {"type": "regression"}}}
    model = polymodal.build(spec).eval()
    ref = SeedTabularEncoder([40, 12], [8, 4], 2, 32).eval()
    with torch.no_grad():
        # The adapter's tables have 2 extra rows (unknown, missing) after the known categories.
        ref.embeddings[0].weight.copy_(model.adapters["t"].embeddings["make"].weight[:40])
        ref.embeddings[1].weight.copy_(model.adapters["t"].embeddings["color"].weight[:12])
        layers = model.input_backbones["t"].layers
        for mine, theirs in ((layers[0].linear, ref.fc1), (layers[1].linear, ref.fc2)):
            theirs.load_state_dict(mine.state_dict())
    cat = torch.stack([torch.randint(0, 40, (6,)), torch.randint(0, 12, (6,))], dim=1)
    num = torch.randn(6, 2)
    columns = {"make": cat[:, 0], "color": cat[:, 1], "age": num[:, 0], "km": num[:, 1]}
    ours = model.input_backbones["t"](model.adapters["t"](columns))
    assert torch.allclose(ours, ref(cat, num), atol=1e-6)


def test_torchvision_backbone_matches_seed_one_image_encoder():
    import torchvision

    spec = {"inputs": {"photo": {"adapter": {"type": "image", "channels": 3},
                                 "backbone": {"type": "torchvision", "model": "resnet18"}}},
            "heads": {"y": {"type": "classification", "classes": 2}}}
    model = polymodal.build(spec).eval()
    resnet = torchvision.models.resnet18()
    resnet.load_state_dict(model.input_backbones["photo"].model.state_dict(), strict=False)
    encoder = nn.Sequential(*list(resnet.children())[:-1]).eval()  # the seed's encoder
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.input_backbones["photo"](x), torch.flatten(encoder(x), 1),
                              atol=1e-5)


def test_concat_mlp_and_head_match_seed_one_fusion_layers():
    spec = {"inputs": {"a": {"adapter": {"type": "tabular", "numerical": ["x"],
                                         "missing_indicators": False}},
                       "b": {"adapter": {"type": "tabular", "numerical": ["y", "z"],
                                         "missing_indicators": False}}},
            "fusion": {"type": "concat", "hidden": [8]},
            "heads": {"y": {"type": "classification", "classes": 2}}}
    model = polymodal.build(spec).eval()
    fc1 = model.fusions["a+b"].mlp[0].linear
    fc2 = model.heads["y"].linear
    a, b = torch.randn(5, 1), torch.randn(5, 2)
    expected = fc2(F.relu(fc1(torch.cat([a, b], dim=1))))
    out = model({"a": {"x": a[:, 0]}, "b": {"y": b[:, 0], "z": b[:, 1]}})["y"]
    assert torch.allclose(out, expected, atol=1e-6)


def test_image_projection_matches_seed_two_input_projection():
    spec = {"inputs": {"ct": {"adapter": {"type": "image", "channels": 12, "project_to": 3}}},
            "fusion": {"type": "concat"}, "heads": {"y": {"type": "regression"}}}
    model = polymodal.build(spec)
    conv = nn.Conv2d(12, 3, kernel_size=1)  # the seed's InputProjection
    conv.load_state_dict(model.adapters["ct"].projection[0].state_dict())
    x = torch.randn(2, 12, 8, 8)
    assert torch.allclose(model.adapters["ct"](x), conv(x), atol=1e-6)


def test_attention_over_spatial_tokens_matches_a_hand_written_transformer_layer():
    spec = {"inputs": {"photo": {"adapter": {"type": "image", "channels": 3, "project_to": 6}}},
            "fusion": {"type": "attention", "dim": 8, "heads": 2, "pooling": "mean"},
            "heads": {"y": {"type": "regression"}}}
    model = polymodal.build(spec).eval()
    fusion = model.fusions["photo"]
    layer = fusion.encoder.layers[0]
    fmap = torch.randn(2, 6, 3, 4)
    # Seed article 2 flattens the map position by position (h then w) into a sequence.
    tokens = fmap.permute(0, 2, 3, 1).reshape(2, 12, 6)
    x = fusion.projections["photo"](tokens) + fusion.input_embeddings["photo"]
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    attention.load_state_dict(layer.self_attn.state_dict())
    h = layer.norm1(x)
    x = x + attention(h, h, h, need_weights=False)[0]
    x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
    expected = fusion.norm(x).mean(dim=1)
    with torch.no_grad():
        assert torch.allclose(fusion({"photo": fmap}), expected, atol=1e-5)
