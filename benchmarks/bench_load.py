"""Time to `polymodal.load` a ResNet-50-sized model file against the bare floor: build the same
skeleton by hand, `safetensors.torch.load_file`, `load_state_dict`.

    python benchmarks/bench_load.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

import polymodal
from _timing import alternate, parse_args, report

SPEC = {
    "name": "resnet50_sized",
    "inputs": {"photo": {"adapter": {"type": "image", "channels": 3, "normalize": "imagenet"},
                         "backbone": "vision"}},
    "backbones": {"vision": {"type": "torchvision", "model": "resnet50"}},
    "heads": {"label": {"type": "classification", "classes": 1000}},
}


class _Holder(nn.Module):
    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class _Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))


def skeleton() -> nn.Module:
    """The same modules as the spec builds, named to match the file, written by hand."""
    resnet = torchvision.models.resnet50(weights=None)
    resnet.fc = nn.Identity()
    return _Holder(
        adapters=nn.ModuleDict({"photo": _Normalize()}),
        backbones=nn.ModuleDict({"vision": _Holder(model=resnet)}),
        heads=nn.ModuleDict({"label": _Holder(linear=nn.Linear(2048, 1000))}),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parse_args(parser, repeats=1)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.safetensors"
        model = polymodal.build(SPEC)
        polymodal.save(model, path)
        params = sum(p.numel() for p in model.parameters())
        print(f"model file {path.stat().st_size / 1e6:.1f} MB, {params:,} parameters;"
              f" torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

        def floor() -> nn.Module:
            net = skeleton()
            net.load_state_dict(load_file(str(path)), strict=True)
            return net

        def floor_meta() -> nn.Module:
            with torch.device("meta"):
                net = skeleton()
            net.load_state_dict(load_file(str(path)), strict=True, assign=True)
            return net

        def with_polymodal() -> nn.Module:
            return polymodal.load(path)

        reference = floor()
        loaded = with_polymodal()
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in reference.state_dict().items())
        times = alternate({
            "bare floor (build + load_file)": floor,
            "polymodal.load": with_polymodal,
            "floor on meta device (assign)": floor_meta,
        }, repeats=args.repeats)
    report("load a ResNet-50-sized model file", times, "bare floor (build + load_file)",
           "polymodal.load", 1.2)

if __name__ == "__main__":
    main()
