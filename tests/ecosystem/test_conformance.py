"""The conformance kit: every built-in passes it with every input it accepts, and the kit
catches the faults it is there for, each as a ConformanceError naming the check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import pytest
import torch
from pydantic import Field, field_validator
from torch import nn

from polymodal.plugin import (
    Backbone,
    BackboneConfig,
    ConformanceError,
    ConnectionMismatch,
    FeatureMap,
    Fusion,
    FusionConfig,
    Head,
    HeadConfig,
    Sequence,
    Signal,
    Tokens,
    Vector,
    check_component,
)
from polymodal._manifest import catalog
from polymodal._registry import Registry
from polymodal._testing import DEFAULT_FUSION_TAKES

BUILT_INS = [(c.kind, c.type) for entries in catalog().plugins.values() for c in entries]
FUSIONS = [t for k, t in BUILT_INS if k == "fusion"]

#: Option sets each built-in must reject (besides an unknown key, always checked).
BAD_OPTIONS = {
    "image": [{"channels": 0}, {"normalize": "imagenet", "channels": 1}],
    "tabular": [{"categorical": {}, "numerical": []}, {"numerical": ["make"]}],
    "mlp": [{"hidden": []}, {"dropout": 1.0}],
    "timm": [{"in_chans": 0}],
    "torchvision": [{"in_chans": 0}],
    "concat": [{"hidden": [0]}],
    "attention": [{"dim": 64, "heads": 5}],
    "film": [{"stages": []}, {"stages": [3, 3]}, {"target": "nowhere"}],
    "classification": [{"classes": 1}],
    "multilabel": [{"labels": 0}, {"labels": 2, "pos_weight": [1.0]}],
    "regression": [{"outputs": 0}, {"loss": "hinge"}],
    "gated": [{"dim": 0}, {"modality_dropout": 1.0}],
}


@pytest.fixture(scope="module")
def registry():
    return Registry()


def kinds(takes: Mapping[str, Signal]) -> set[type]:
    return {type(s) for s in takes.values()}


def assert_probed_with_every_kind(type_name: str, probed: tuple) -> None:
    every_kind = {Vector, FeatureMap, Tokens, Sequence}
    assert probed[0] == DEFAULT_FUSION_TAKES[0] and kinds(probed[0]) == every_kind
    if type_name == "film":
        # It conditions the image's backbone, so an image is in every input it takes; each
        # other kind conditions it alone too.
        assert all("image" in takes for takes in probed)
        assert [kinds(t) for t in probed if len(t) == 2] == [
            {FeatureMap}, {FeatureMap, Vector}, {FeatureMap, Tokens}, {FeatureMap, Sequence}]
    else:
        assert probed == DEFAULT_FUSION_TAKES
        alone = {frozenset(kinds(t)) for t in probed if len(kinds(t)) == 1}
        assert alone == {frozenset({k}) for k in every_kind}


@pytest.mark.parametrize("kind,type_name", BUILT_INS, ids=[t for _, t in BUILT_INS])
def test_every_built_in_conforms(registry, kind, type_name):
    record = registry.resolve(kind, f"polymodal:{type_name}")
    report = check_component(registry.load(record), bad_options=BAD_OPTIONS[type_name],
                             registry=registry)
    assert report.kind == kind and report.output_shape[0] == 2
    assert report.probed[0] == report.takes
    if kind == "fusion":
        assert_probed_with_every_kind(type_name, report.probed)


def test_the_pytest_fixture_is_the_check(polymodal_check):
    assert polymodal_check is check_component


@pytest.mark.parametrize("type_name", FUSIONS)
@pytest.mark.parametrize("takes", [
    {"ecg": Sequence(3)},
    {"ecg": Sequence(3), "eeg": Sequence(5)},
    {"notes": Tokens(6), "ecg": Sequence(3), "table": Vector(4)},
], ids=["one-sequence", "two-sequences", "tokens-sequence-vector"])
def test_every_fusion_conforms_taking_sequences_and_tokens(registry, type_name, takes):
    cls = registry.load(registry.resolve("fusion", f"polymodal:{type_name}"))
    options = None
    if type_name == "film":
        # film conditions a feature map; the sequences and tokens are its condition.
        options, takes = {"target": "image", "stages": [1]}, {"image": FeatureMap(4), **takes}
    report = check_component(cls, options, takes=takes, registry=registry)
    assert report.probed == (takes,)


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
    (Lying, {}, r"^Lying: shape: the config says it gives a vector of 8 \(\[B, 8\]\); it gave a tensor of"
     r" shape \[2, 4\] \(taking "),
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


# -- every failure is a ConformanceError naming the check, never a raw exception -----------


class Raising(Backbone):
    """Raises a ValueError in forward."""

    class Config(BackboneConfig):
        type: Literal["raising"] = "raising"

        def gives(self, takes):
            return Vector(4)

    def forward(self, x):
        raise ValueError("no good")


class Unbuildable(Head):
    """Raises while it is built."""

    class Config(HeadConfig):
        type: Literal["unbuildable"] = "unbuildable"

    def __init__(self, config, takes):
        super().__init__(config, takes)
        raise RuntimeError("cannot build")


class AnyKind(Backbone):
    """Takes any signal and says it gives a vector of its width, but averages every axis after
    the second: right for feature maps and sequences, wrong for tokens."""

    class Config(BackboneConfig):
        type: Literal["any_kind"] = "any_kind"

        def gives(self, takes):
            return Vector(takes.width)

    def forward(self, x):
        return x.flatten(2).mean(2) if x.dim() > 2 else x


class Sloppy(Backbone):
    """Its config refuses what it cannot take with a KeyError, not a ConnectionMismatch."""

    class Config(BackboneConfig):
        type: Literal["sloppy"] = "sloppy"

        def gives(self, takes):
            return {Vector: Vector}[type(takes)](4)

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.width, 4)

    def forward(self, x):
        return self.linear(x)


class Touchy(Head):
    """Its config validator raises a TypeError, which spec validation lets through."""

    class Config(HeadConfig):
        type: Literal["touchy"] = "touchy"
        scale: float = Field(1.0, description="Output scale (> 0).")

        @field_validator("scale")
        @classmethod
        def _positive(cls, scale: float) -> float:
            if scale <= 0:
                raise TypeError("scale must be positive")
            return scale

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.dim, 1)

    def forward(self, fused):
        return self.linear(fused)

    def predict(self, output):
        return {"value": output}


class OldPooling(Fusion):
    """Pools as the fusions did before signals pooled themselves: every 3-D input over axis 1,
    which is the channels of a sequence ``[B, C, T]``, not its time."""

    class Config(FusionConfig):
        type: Literal["old_pooling"] = "old_pooling"

        def gives(self, takes):
            return Vector(4)

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.linears = nn.ModuleDict({n: nn.Linear(s.width, 4) for n, s in takes.items()})

    @staticmethod
    def pool(x):
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x.mean(dim=1) if x.dim() == 3 else x

    def forward(self, features, present=None):
        return sum(self.linears[n](self.pool(x)) for n, x in features.items())


class Ignoring(Fusion):
    """Pools and concatenates every input, ignoring which are present."""

    class Config(FusionConfig):
        type: Literal["ignoring"] = "ignoring"

        def gives(self, takes):
            return Vector(sum(s.width for s in takes.values()))

    def forward(self, features, present=None):
        return torch.cat([self.takes[n].pool(x) for n, x in features.items()], dim=1)


class WrongWidth(Fusion):
    """Gives one feature too many for a sequence input."""

    class Config(FusionConfig):
        type: Literal["wrong_width"] = "wrong_width"

        def gives(self, takes):
            return Vector(sum(s.width for s in takes.values()))

    def forward(self, features, present=None):
        parts = [self.takes[n].pool(x) for n, x in features.items()]
        return torch.cat(parts + [x[:, :1, 0] for x in features.values() if x.dim() == 3
                                  and x.shape[1] == 3], dim=1)


MIX = r"\{image: a feature map of 4 channels, table: a vector of 8, text: tokens of 6, series:" \
      r" a sequence of 3 channels\}"


@pytest.mark.parametrize("cls,takes,expected,cause", [
    (Raising, Vector(6), r"^Raising: forward: ValueError: no good \(taking a vector of 6\)$",
     ValueError),
    (Unbuildable, Vector(6), r"^Unbuildable: build: RuntimeError: cannot build \(taking a vector"
     r" of 6\)$", RuntimeError),
    (AnyKind, None, r"^AnyKind: shape: the config says it gives a vector of 16 \(\[B, 16\]\); it gave a"
     r" tensor of shape \[2, 5\] \(taking tokens of 16\)$", None),
    (Sloppy, None, r"^Sloppy: gives: raised KeyError: .*FeatureMap.*, not a ConnectionMismatch"
     r" \(taking a feature map of 3 channels\)$", KeyError),
    (OldPooling, None, r"^OldPooling: forward: RuntimeError: mat1 and mat2 shapes cannot be"
     r" multiplied .* \(taking " + MIX + r"\)$", RuntimeError),
    (OldPooling, {"ecg": Sequence(3)}, r"^OldPooling: forward: RuntimeError: mat1 and mat2 .*"
     r" \(taking \{ecg: a sequence of 3 channels\}\)$", RuntimeError),
    (Ignoring, None, r"^Ignoring: presence: input 'image', marked absent for a sample, still"
     r" changes that sample's output \(taking " + MIX + r"\)$", None),
    (WrongWidth, {"ecg": Sequence(3)}, r"^WrongWidth: shape: the config says it gives a vector"
     r" of 3 \(\[B, 3\]\); it gave a tensor of shape \[2, 4\] \(taking \{ecg: a sequence of 3"
     r" channels\}\)$", None),
])
def test_a_failure_inside_any_check_is_a_conformance_error_naming_it(registry, cls, takes,
                                                                     expected, cause):
    with pytest.raises(ConformanceError, match=expected) as info:
        check_component(cls, takes=takes, registry=registry)
    assert isinstance(info.value.__cause__, cause) if cause else True


def test_a_component_that_accepts_a_signal_must_work_with_it(registry):
    # AnyKind works with feature maps, vectors and sequences; only tokens show its fault.
    for signal in (FeatureMap(3), Vector(16), Sequence(4)):
        check_component(AnyKind, takes=signal, registry=registry)


def test_bad_options_that_raise_a_raw_exception_are_a_conformance_error(registry):
    expected = (r"^Touchy: bad options: \{'scale': -1.0\} raised, instead of a spec error,"
                r" TypeError: scale must be positive$")
    with pytest.raises(ConformanceError, match=expected):
        check_component(Touchy, bad_options=[{"scale": -1.0}], registry=registry)


class Graph(Signal):
    """A third-party signal with only a description."""

    def describe(self):
        return "a graph"


class Mesh(Graph):
    """A third-party signal with a shape (nodes x 4 features) but none of the tensor methods."""

    width = 4

    def example_shape(self, batch):
        return (batch, 4, 3)

    def layout(self):
        return "[B, 4, nodes]"

    def _fixed_dims(self):
        return (1,)


def test_third_party_signals_are_a_conformance_error_naming_the_check(registry):
    with pytest.raises(ConformanceError, match=r"^AnyKind: gives: raised NotImplementedError:"
                       r" signal Graph does not implement width; .* \(taking a graph\)$"):
        check_component(AnyKind, takes=Graph(), registry=registry)
    with pytest.raises(ConformanceError, match=r"^AnyKind: spec: the conformance check's probes"
                       r" know the signals vector, feature_map, tokens, sequence; a graph \(Mesh\)"
                       r" is not one of them, .* \(taking a graph\)$"):
        check_component(AnyKind, takes=Mesh(), registry=registry)


class CodeBackbone(Backbone):
    """Embeds integer codes given as a 1-channel sequence (a test helper, like a token-id
    reader): no gradient can reach its input."""

    class Config(BackboneConfig):
        type: Literal["codes"] = "codes"

        def gives(self, takes):
            if not (isinstance(takes, Sequence) and takes.channels == 1):
                raise ConnectionMismatch("takes codes as a 1-channel sequence", wanted=Sequence(1))
            return Vector(4)

    example_takes = Sequence(1)
    discrete_input = True

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.embed = nn.Embedding(8, 4)

    def forward(self, x):
        return self.embed(x[:, 0].round().long().clamp(0, 7)).mean(dim=1)


class ContinuousCodeBackbone(CodeBackbone):
    """The same, not declaring that it reads codes."""

    class Config(CodeBackbone.Config):
        type: Literal["continuous-codes"] = "continuous-codes"

    discrete_input = False


def test_a_backbone_reading_codes_is_checked_with_its_example_takes_and_no_input_gradient():
    report = check_component(CodeBackbone)
    assert report.probed == (Sequence(1),)
    with pytest.raises(ConformanceError, match="no gradient flows back to its input"):
        check_component(ContinuousCodeBackbone)
