"""Try timm and torchvision image models as polymodal backbones; write the compatibility table.

One model per timm module (``timm.list_modules()``: the smallest of a few small-sounding names,
by parameter count) and every torchvision classification model are tried as a new user would:
a 5-band image beside a tabular input, by both N-channel routes (``project_to: 3`` on the image
adapter, or ``in_chans: 5`` on the backbone), for each output kind (``vector`` through a concat
fusion; ``feature_map`` and ``tokens`` through an attention fusion), at the smallest square
image size the model accepts. A row passes when ``validate`` accepts the spec, the model builds,
an eval forward and one training step (forward, backward, SGD step) run, and the backbone gives
exactly what ``validate`` said; a refusal by ``validate`` is recorded with its reason; anything
else is a crash.

Each model runs in a worker process with a time limit, so a hang or a crash of one model cannot
stop the sweep; results are saved after every model (``backbone_sweep.json`` beside this
script), so an interrupted sweep resumes where it stopped. The table goes to
``docs/backbones.md``.

    python tools/sweep_backbones.py                  # sweep what is missing, write the table
    python tools/sweep_backbones.py --table          # only write the table from the results
    python tools/sweep_backbones.py --redo timm:ghostnet_050 torchvision:googlenet
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("backbone_sweep.json")
TABLE = ROOT / "docs" / "backbones.md"

#: Models above this many parameters are listed as not swept (a real build and a training
#: step of each would take minutes and gigabytes on a small machine).
MAX_PARAMS = 150_000_000
#: Seconds a worker may spend on one model before it is stopped and the model marked.
TIMEOUT = 300
OUTPUTS = ("vector", "feature_map", "tokens")
ROUTES = ("project_to", "in_chans")
BANDS = 5
#: Square image sizes tried, smallest first.
SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)

#: Name parts that suggest a small model, smallest first: candidates are ranked by them.
SMALL_WORDS = ("pico", "femto", "atto", "nano", "xxs", "tiny", "xs", "micro", "mini", "small",
               "_s", "b0", "050", "lite", "t")
CANDIDATES = 3

#: Models an issue named (their families needed a fix): swept besides one per module.
EXTRA = ("timm:mobilenetv3_small_100", "timm:ghostnet_100", "timm:hgnetv2_b0",
         "timm:efficientvit_b0", "timm:lcnet_050", "timm:mobilenetv4_conv_small",
         "timm:swin_tiny_patch4_window7_224", "timm:vit_tiny_patch16_224",
         "timm:hrnet_w18_small", "timm:resnet18")


# --- choosing the models -------------------------------------------------------------------

def _rank(name: str) -> tuple[int, int, str]:
    word = next((i for i, w in enumerate(SMALL_WORDS) if w in name), len(SMALL_WORDS))
    return word, len(name), name


def timm_params(model: str) -> int:
    import timm
    from polymodal_plugins._probe import weightless  # a meta build, weight init skipped

    net = weightless(lambda: timm.create_model(model, num_classes=0))
    return sum(p.numel() for p in net.parameters())


def torchvision_params(model: str) -> int:
    import torchvision

    return int(torchvision.models.get_model_weights(model).DEFAULT.meta["num_params"])


def timm_choices() -> dict[str, str]:
    """One model per timm module: of its few smallest-sounding names, the fewest parameters."""
    import timm

    chosen = {}
    for module in timm.list_modules():
        names = [n for n in timm.list_models(module=module) if not n.startswith("test_")]
        if not names:
            continue
        ranked = sorted(names, key=_rank)[:CANDIDATES]
        sizes = {}
        for name in ranked:
            try:
                sizes[name] = timm_params(name)
            except Exception:  # noqa: BLE001 - the sweep itself reports what fails
                sizes[name] = 0
        chosen[f"timm:{min(ranked, key=lambda n: (sizes[n], _rank(n)))}"] = module
    return chosen


def all_models() -> dict[str, str]:
    """Every model to sweep, ``library:name`` -> its family (timm module, torchvision)."""
    import torchvision

    models = timm_choices()
    for key in EXTRA:
        models.setdefault(key, "named in an issue")
    for name in torchvision.models.list_models(module=torchvision.models):
        models[f"torchvision:{name}"] = "torchvision"
    return models


# --- trying one model (in a worker) ----------------------------------------------------------

def spec_for(library: str, model: str, output: str, route: str, size: int | None) -> dict:
    adapter: dict[str, Any] = {"type": "image", "channels": BANDS}
    backbone: dict[str, Any] = {"type": library, "model": model, "output": output}
    if size is not None:
        adapter["size"] = size
    if route == "project_to":
        adapter["project_to"] = 3
    else:
        backbone["in_chans"] = BANDS
    fusion = {"type": "concat"} if output == "vector" else {"type": "attention", "dim": 32,
                                                           "heads": 2}
    return {"inputs": {"image": {"adapter": adapter, "backbone": "vision"},
                       "table": {"adapter": {"type": "tabular", "numerical": ["a", "b"]},
                                 "backbone": {"type": "mlp", "hidden": [8]}}},
            "backbones": {"vision": backbone}, "fusion": fusion,
            "heads": {"y": {"type": "classification", "classes": 2}}}


def _refusal(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("backbones.vision: ") else text


def validate(spec: dict):
    import polymodal

    return polymodal.plan(polymodal.load_spec(spec)).features["image"]


def smallest_size(library: str, model: str) -> tuple[int | None, str]:
    """The smallest square size whose spec validates, or None and the last refusal."""
    import polymodal

    reason, sizes = "", list(SIZES)
    while sizes:
        size = sizes.pop(0)
        try:
            validate(spec_for(library, model, "vector", "project_to", size))
            return size, ""
        except polymodal.SpecError as exc:
            reason = _refusal(exc)
        # A refusal names the smallest size the model takes, where it knows one.
        found = re.search(r"the smallest square size it takes is (\d+)", reason)
        if found:
            sizes = [int(found.group(1))]
    return None, reason


def _shape_problem(stated, got) -> str | None:
    wanted = {"Vector": 2, "FeatureMap": 4, "Tokens": 3}[type(stated).__name__]
    channel = 1 if wanted == 4 else -1
    if got.dim() != wanted or got.shape[channel] != stated.width:
        return f"validate said {stated.describe()}, the backbone gave shape {list(got.shape)}"
    return None


def try_spec(spec: dict, size: int) -> dict:
    """Validate, build, one eval forward and one training step; what happened."""
    import polymodal
    import torch

    try:
        stated = validate(spec)
    except polymodal.SpecError as exc:
        return {"status": "refused", "reason": _refusal(exc)}
    try:
        model = polymodal.build(spec)
        channels = spec["backbones"]["vision"].get("in_chans", 3)
        images = torch.randn(2, BANDS, size, size)
        batch = {"image": images, "table": {"a": torch.randn(2), "b": torch.randn(2)}}
        backbone = model.backbones["vision"]
        model.eval()
        with torch.no_grad():
            model(batch)
            got = backbone(torch.randn(2, channels, size, size))
        problem = _shape_problem(stated, got)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        model(batch)["y"].float().logsumexp(dim=1).mean().backward()
        optimizer.step()
        problem = problem or _shape_problem(stated, backbone(torch.randn(2, channels, size, size)))
    except Exception as exc:  # noqa: BLE001 - a crash is the finding
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"status": "crash", "error": f"{type(exc).__name__}: {first}"}
    if problem:
        return {"status": "crash", "error": problem}
    return {"status": "pass", "gives": stated.describe()}


def sweep_one(key: str) -> dict:
    import polymodal

    library, model = key.split(":", 1)
    params = timm_params(model) if library == "timm" else torchvision_params(model)
    result: dict[str, Any] = {"params": params}
    if params > MAX_PARAMS:
        return {**result, "status": "not swept"}
    size, reason = smallest_size(library, model)
    result["size"] = size
    try:
        validate(spec_for(library, model, "vector", "project_to", None))
        result["any_size"] = "pass"
    except polymodal.SpecError as exc:
        result["any_size"] = _refusal(exc)
    if size is None:
        return {**result, "status": "refused", "reason": reason}
    result["cells"] = {f"{output}/{route}": try_spec(spec_for(library, model, output, route, size), size)
                       for output in OUTPUTS for route in ROUTES}
    statuses = {cell["status"] for cell in result["cells"].values()}
    result["status"] = "crash" if "crash" in statuses else "swept"
    return result


def worker(keys: list[str]) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for key in keys:
        print("START " + key, flush=True)
        started = time.time()
        result = sweep_one(key)
        result["seconds"] = round(time.time() - started, 1)
        print("RESULT " + json.dumps({key: result}), flush=True)


# --- the supervisor ----------------------------------------------------------------------------

def load_results() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {"versions": {}, "families": {}, "results": {}}


def save_results(data: dict) -> None:
    temporary = RESULTS.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    temporary.replace(RESULTS)


def versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    return {"torch": torch.__version__.split("+")[0], "timm": timm.__version__,
            "torchvision": torchvision.__version__.split("+")[0]}


def supervise(keys: list[str], data: dict, timeout: float) -> None:
    """Run ``keys`` in a worker; a model past ``timeout`` seconds or a dead worker is recorded
    and the worker restarted after it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    while keys:
        process = subprocess.Popen([sys.executable, __file__, "--worker", *keys], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        current, deadline = None, time.time() + timeout
        while True:
            if not selector.select(timeout=max(0.0, deadline - time.time())):
                process.kill()
                _record(data, current, {"status": "crash", "error": f"timed out after {timeout:.0f} s"})
                break
            line = process.stdout.readline()
            if not line:
                process.wait()
                if current is not None:
                    _record(data, current, {"status": "crash",
                                            "error": f"worker died (exit code {process.returncode})"})
                break
            if line.startswith("START "):
                current, deadline = line[6:].strip(), time.time() + timeout
                print(f"{time.strftime('%H:%M:%S')} {current}", flush=True)
            elif line.startswith("RESULT "):
                [(key, result)] = json.loads(line[7:]).items()
                _record(data, key, result)
                current = None
        process.stdout.close()
        keys = [k for k in keys if k not in data["results"]]


def _record(data: dict, key: str | None, result: dict) -> None:
    if key is None:
        return
    data["results"][key] = result
    save_results(data)
    print(f"    {result['status']} ({result.get('seconds', '?')} s)", flush=True)


# --- the table ---------------------------------------------------------------------------------

def _cell(result: dict, output: str) -> str:
    cells = {route: result["cells"][f"{output}/{route}"] for route in ROUTES}
    texts = {route: _status(cell) for route, cell in cells.items()}
    if len(set(texts.values())) == 1:
        return texts[ROUTES[0]]
    return "; ".join(f"{route}: {text}" for route, text in texts.items())


def _status(cell: dict) -> str:
    if cell["status"] == "pass":
        return "pass"
    if cell["status"] == "refused":
        return f"refused: {cell['reason']}"
    return f"**CRASH**: {cell['error']}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(key: str, family: str, result: dict) -> str:
    library, model = key.split(":", 1)
    params = f"{result['params'] / 1e6:.1f}M"
    if result["status"] == "not swept":
        cells = [f"not swept ({result['params']:,} parameters)"] * len(OUTPUTS)
        size, any_size = "", ""
    elif "cells" not in result:
        text = (f"refused: {result['reason']}" if result["status"] == "refused"
                else f"**CRASH**: {result['error']}")
        cells, size, any_size = [text] * len(OUTPUTS), "", result.get("any_size", "")
    else:
        cells = [_cell(result, output) for output in OUTPUTS]
        size, any_size = str(result["size"]), result["any_size"]
        any_size = "pass" if any_size == "pass" else f"refused: {any_size}"
    family = f" ({family})" if library == "timm" else ""
    # Messages name the model (timm resnet18 ...): the row already does.
    cells = [c.replace(f"{library} {model} ", "").replace(f"{library} {model!r}", "it")
             for c in (any_size, *cells)]
    return "| " + " | ".join(_escape(c) for c in (f"`{model}`{family}", params, size,
                                                  *cells)) + " |"


def summary(data: dict) -> dict[str, int]:
    counts = {"models": 0, "all pass": 0, "some refused": 0, "crash": 0, "not swept": 0,
              "refused": 0}
    for result in data["results"].values():
        counts["models"] += 1
        if result["status"] == "not swept":
            counts["not swept"] += 1
        elif result["status"] == "crash":
            counts["crash"] += 1
        elif "cells" not in result:
            counts["refused"] += 1
        elif all(c["status"] == "pass" for c in result["cells"].values()):
            counts["all pass"] += 1
        else:
            counts["some refused"] += 1
    return counts


def write_table(data: dict) -> None:
    counts = summary(data)
    v = data["versions"]
    lines = [
        "# Backbone compatibility",
        "",
        "<!-- Generated by tools/sweep_backbones.py from tools/backbone_sweep.json; do not edit. -->",
        "",
        f"Which timm and torchvision image models work as polymodal backbones (torch {v.get('torch')},"
        f" timm {v.get('timm')}, torchvision {v.get('torchvision')}): one model per timm module (the"
        " smallest of a few small-sounding names) plus models whose families needed a fix, and"
        " every torchvision classification model.",
        "",
        "Each model was tried as a new user would: a 5-band image beside a tabular input, by both"
        " N-channel routes (`project_to: 3` on the image adapter, or `in_chans: 5` on the"
        " backbone), for each `output` (`vector` through a concat fusion, `feature_map` and"
        " `tokens` through an attention fusion), at the smallest square image size `validate`"
        " accepts (**size**, set as the image adapter's `size`). **pass**: `validate` accepts"
        " the spec, the model builds, an eval forward and one training step run, and the backbone"
        " gives exactly what `validate` said. **refused**: `validate` rejects the spec with the"
        " reason shown. One cell stands for both routes unless they differ. **Any size**: whether"
        " `validate` accepts the model when the adapter does not fix the image size (a model"
        " built for one size needs the adapter's `size`).",
        "",
        f"{counts['models']} models: {counts['all pass']} pass every output,"
        f" {counts['some refused']} pass some and are refused the others with the reason,"
        f" {counts['refused']} are refused, {counts['not swept']} were not swept (over"
        f" {MAX_PARAMS // 1_000_000}M parameters), {counts['crash']} crash.",
        "",
        "Regenerate with `python tools/sweep_backbones.py` (it resumes; `--redo KEY...` reruns"
        " models, `--table` only rewrites this page).",
    ]
    for library, title in (("timm", "timm (one model per module)"), ("torchvision", "torchvision")):
        lines += ["", f"## {title}", "",
                  "| model | params | size | any size | vector | feature_map | tokens |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        keys = sorted(k for k in data["results"] if k.startswith(library + ":"))
        lines += [_row(k, data["families"].get(k, ""), data["results"][k]) for k in keys]
    TABLE.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="only write the table")
    parser.add_argument("--redo", nargs="*", default=[], help="library:model keys to rerun")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per model")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        sys.path.insert(0, str(ROOT))
        worker(args.worker)
        return
    data = load_results()
    if not args.table:
        data["versions"] = versions()
        if not data["families"]:
            data["families"] = all_models()
            save_results(data)
        for key in args.redo:
            data["results"].pop(key, None)
            data["families"].setdefault(key, "")
        keys = [k for k in data["families"] if k not in data["results"]]
        supervise(keys, data, args.timeout)
    write_table(data)
    print(summary(data))


if __name__ == "__main__":
    main()
