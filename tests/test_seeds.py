"""The two seed architectures, built from specs, against hand-written references."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

import polymodal

CATEGORICAL = {"make": 40, "color": 12}
EMBEDDING_DIMS = {"make": 8, "color": 4}
NUMERICAL = ["age", "mileage"]
TABULAR_HIDDEN = 64
CLASSES = 2


# -- seed 1: ResNet-18 photo + tabular row, late fusion --------------------------------------


class ImageEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        self.body = nn.Sequential(*list(resnet.children())[:-1])  # classifier dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(x), 1)


class TabularEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(CATEGORICAL[c], EMBEDDING_DIMS[c]) for c in CATEGORICAL
        )
        width = sum(EMBEDDING_DIMS.values()) + len(NUMERICAL)
        self.fc1 = nn.Linear(width, TABULAR_HIDDEN)
        self.fc2 = nn.Linear(TABULAR_HIDDEN, TABULAR_HIDDEN // 2)

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        embedded = [emb(col) for emb, col in zip(self.embeddings, categorical.T)]
        x = torch.cat([*embedded, numerical], dim=1)
        return self.fc2(torch.relu(self.fc1(x)))


class ReferenceSeed1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = ImageEncoder()
        self.tabular = TabularEncoder()
        self.fc1 = nn.Linear(512 + TABULAR_HIDDEN // 2, 256)
        self.fc2 = nn.Linear(256, CLASSES)

    def forward(self, image: torch.Tensor, categorical: torch.Tensor,
                numerical: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.image(image), self.tabular(categorical, numerical)], dim=1)
        return self.fc2(torch.relu(self.fc1(x)))


def seed1_spec(missing_indicators: bool) -> dict:
    return {
        "name": "claims",
        "inputs": {
            "photo": {"adapter": {"type": "image", "channels": 3}, "backbone": "vision"},
            "report": {
                "adapter": {
                    "type": "tabular",
                    "categorical": CATEGORICAL,
                    "embedding_dims": EMBEDDING_DIMS,
                    "numerical": NUMERICAL,
                    "missing_indicators": missing_indicators,
                },
                "backbone": {"type": "mlp", "hidden": [TABULAR_HIDDEN, TABULAR_HIDDEN // 2],
                             "final_activation": False},
            },
        },
        "backbones": {"vision": {"type": "torchvision", "model": "resnet18"}},
        "fusion": {"type": "concat", "hidden": [256]},
        "heads": {"fraud": {"type": "classification", "classes": CLASSES}},
    }


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def documented_extras(missing_indicators: bool) -> int:
    # The tabular adapter reserves 2 embedding rows per categorical column (unknown, missing).
    reserved_rows = sum(2 * EMBEDDING_DIMS[c] for c in CATEGORICAL)
    # concat keeps a learned placeholder vector per input for rows where that input is absent.
    placeholders = 512 + TABULAR_HIDDEN // 2
    # A missing flag per numerical column widens the MLP's first layer by one input each.
    indicators = len(NUMERICAL) * TABULAR_HIDDEN if missing_indicators else 0
    return reserved_rows + placeholders + indicators


def test_seed1_parameter_count_matches_reference_plus_documented_extras():
    reference = count(ReferenceSeed1())
    for indicators in (False, True):
        model = polymodal.build(seed1_spec(indicators))
        assert count(model) == reference + documented_extras(indicators), indicators
    # The image part is exactly torchvision's ResNet-18 without its classifier.
    assert count(model.backbones["vision"]) == count(ImageEncoder()) == 11_176_512


def test_seed1_trains_loss_falls():
    torch.manual_seed(0)
    model = polymodal.build(seed1_spec(missing_indicators=True)).train()
    n = 8
    batch = {
        "photo": torch.rand(n, 3, 16, 16),
        "report": {
            "make": torch.randint(0, 40, (n,)),
            "color": torch.randint(0, 12, (n,)),
            "age": torch.randn(n),
            "mileage": torch.randn(n),
        },
    }
    target = torch.tensor([0, 1] * (n // 2))
    head = model.heads["fraud"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = head.loss(model(batch)["fraud"], target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(torch.isfinite(torch.tensor(losses)))


# -- seed 2: 1, 2 and 12 channel inputs, one shared ResNet, a head per input ------------------

SCAN_CHANNELS = {"mri": 1, "doppler": 2, "multispectral": 12}
SCAN_CLASSES = {"mri": 4, "doppler": 3, "multispectral": 10}


def seed2_spec() -> dict:
    return {
        "name": "scans",
        "inputs": {
            name: {"adapter": {"type": "image", "channels": c, "project_to": 3},
                   "backbone": "shared"}
            for name, c in SCAN_CHANNELS.items()
        },
        "backbones": {"shared": {"type": "timm", "model": "resnet18"}},
        "heads": {
            f"{name}_class": {"type": "classification", "classes": SCAN_CLASSES[name],
                              "inputs": [name]}
            for name in SCAN_CHANNELS
        },
    }


def test_seed2_shares_one_backbone_counted_once():
    import timm

    model = polymodal.build(seed2_spec())
    backbone = count(timm.create_model("resnet18", num_classes=0))
    projections = sum(c * 3 + 3 for c in SCAN_CHANNELS.values())  # 1x1 conv with bias
    heads = sum(512 * k + k for k in SCAN_CLASSES.values())
    assert count(model) == backbone + projections + heads
    assert len(model.backbones) == 1 and len(model.input_backbones) == 0
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))


def test_seed2_batch_with_one_input_returns_only_its_head():
    torch.manual_seed(0)
    model = polymodal.build(seed2_spec()).eval()
    with torch.no_grad():
        out = model({"doppler": torch.rand(2, 2, 32, 32)})
        assert set(out) == {"doppler_class"}
        assert out["doppler_class"].shape == (2, 3)
        both = model({"mri": torch.rand(2, 1, 32, 32), "multispectral": torch.rand(2, 12, 32, 32)})
    assert set(both) == {"mri_class", "multispectral_class"}
    assert both["multispectral_class"].shape == (2, 10)


def test_seed2_gradients_from_each_input_reach_the_shared_backbone():
    model = polymodal.build(seed2_spec()).train()
    stem = model.backbones["shared"].model.conv1.weight
    for name, channels in SCAN_CHANNELS.items():
        model.zero_grad()
        out = model({name: torch.rand(2, channels, 32, 32)})
        out[f"{name}_class"].sum().backward()
        assert stem.grad is not None and stem.grad.abs().sum() > 0
        projection = model.adapters[name].projection[0].weight
        assert projection.grad is not None and projection.grad.abs().sum() > 0
