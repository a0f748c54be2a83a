"""polymodal.testing: every built-in passes the conformance check, and the check catches the
faults it is there for."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import Field
from torch import nn

from polymodal.plugin import Backbone, BackboneConfig, Head, HeadConfig, Vector
from polymodal._manifest import catalog
from polymodal._registry import Registry
from polymodal._testing import ConformanceError, check_component

#: ``film`` conditions a backbone's stages, which the probe components have none of; its
#: shapes, gradients, save/load and bad options are tested in tests/builtins/test_fusions.py.
BUILT_INS = [(c.kind, c.type) for entries in catalog().plugins.values() for c in entries
             if c.type != "film"]

#: Option sets each built-in must reject (besides an unknown key, always checked).
BAD_OPTIONS = {
    "image": [{"channels": 0}, {"normalize": "imagenet", "channels": 1}],
    "tabular": [{"categorical": {}, "numerical": []}, {"numerical": ["make"]}],
    "mlp": [{"hidden": []}, {"dropout": 1.0}],
    "timm": [{"in_chans": 0}],
    "torchvision": [{"in_chans": 0}],
    "concat": [{"hidden": [0]}],
    "attention": [{"dim": 64, "heads": 5}],
    "gated": [{"dim": 0}],
    "film": [{"stages": []}, {"stages": [3, 3]}, {"target": "nowhere"}],
    "classification": [{"classes": 1}],
    "multilabel": [{"labels": 0}, {"labels": 2, "pos_weight": [1.0]}],
    "regression": [{"outputs": 0}, {"loss": "hinge"}],
    "gated": [{"dim": 0}, {"modality_dropout": 1.0}],
    "multilabel": [{"labels": 0}, {"labels": 2, "pos_weight": [1.0]}],
}


@pytest.fixture(scope="module")
def registry():
    return Registry()


@pytest.mark.parametrize("kind,type_name", BUILT_INS, ids=[t for _, t in BUILT_INS])
def test_every_built_in_conforms(registry, kind, type_name):
    record = registry.resolve(kind, f"polymodal:{type_name}")
    report = check_component(registry.load(record), bad_options=BAD_OPTIONS[type_name],
                             registry=registry)
    assert report.kind == kind and report.output_shape[0] == 2


def test_the_pytest_fixture_is_the_check(polymodal_check):
    assert polymodal_check is check_component


class Lying(Backbone):
    """Says it gives a vector of 8 but gives 4."""

    class Config(BackboneConfig):
        type: Literal["lying"] = "lying"

        def gives(self, takes):
            return Vector(8)

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.width, 4)

    def forward(self, x):
        return self.linear(x)


class Detached(Backbone):
    """Cuts the gradient of one of its layers."""

    class Config(BackboneConfig):
        type: Literal["detached"] = "detached"

        def gives(self, takes):
            return Vector(4)

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.first = nn.Linear(takes.width, 4)
        self.second = nn.Linear(4, 4)

    def forward(self, x):
        return self.second(self.first(x).detach())


class Forgetful(Head):
    """Keeps a weight outside its state, so loading a saved model changes its outputs."""

    class Config(HeadConfig):
        type: Literal["forgetful"] = "forgetful"
        scale: float = Field(1.0, description="Output scale.")

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.dim, 1)
        self.hidden_weight = torch.randn(1)

    def forward(self, fused):
        return self.linear(fused) * self.hidden_weight

    def predict(self, output):
        return {"value": output}


class Lenient(Head):
    """Accepts a scale the docs say must be positive."""

    class Config(HeadConfig):
        type: Literal["lenient"] = "lenient"
        scale: float = Field(1.0, description="Output scale (> 0).")

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.dim, 1)

    def forward(self, fused):
        return self.linear(fused) * self.config.scale

    def predict(self, output):
        return {"value": output}


@pytest.mark.parametrize("cls,options,expected", [
    (Lying, {}, r"Lying: shape: the config says it gives a vector of 8, but expected .*got a tensor of shape \[2, 4\]"),
    (Detached, {}, r"Detached: gradients: no gradient reaches parameter\(s\) first.weight, first.bias"),
    (Forgetful, {}, r"Forgetful: save/load: the loaded model fails: RuntimeError"),
    (Lenient, {"bad": [{"scale": -1.0}]}, r"Lenient: bad options: \{'scale': -1.0\} was accepted"),
])
def test_the_check_catches_faulty_components(registry, cls, options, expected):
    with pytest.raises(ConformanceError, match=expected):
        check_component(cls, takes=Vector(6), bad_options=options.get("bad", ()), registry=registry)


def test_unregistered_classes_are_checked_under_a_test_package():
    report = check_component(Lenient, takes=Vector(6))
    assert report.spec["heads"]["y"]["type"] == "polymodal-testing-subject:lenient"


def test_options_that_do_not_validate_are_a_conformance_error():
    with pytest.raises(ConformanceError, match=r"Lenient: config: options \{'scale': 'big'\} do not validate"):
        check_component(Lenient, {"scale": "big"}, takes=Vector(6))
