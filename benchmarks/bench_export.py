"""Inference of an exported model against eager PyTorch: batch-1 latency and batch-64
throughput of the seed-1-sized model (ResNet-18 photo + tabular MLP, concat, 64 px), eager
PyTorch vs ONNX Runtime vs the ExportedProgram (.pt2), side by side in one run.

Targets (CPU): ONNX Runtime at least 1.3x eager throughput at batch 64, and at most 0.7x eager
latency at batch 1. The int8 rows (``export --quantize int8``): on this model, dynamic int8
beside fp32; then on the demo model (`make demo`, or trained here), fp32 ONNX against dynamic
and static (calibrated on the demo's training rows) int8 files: batch-64 throughput on held-out
rows (target: at least 1.5x fp32 ONNX) and accuracy on the held-out rows (within 0.01 of fp32). ``--device cuda`` runs eager PyTorch on the GPU against ONNX Runtime's CUDA
execution provider (from onnxruntime-gpu); the ExportedProgram, traced on the CPU, is then
left out.

    python benchmarks/bench_export.py [--repeats 20] [--size 64] [--threads 1] [--device cpu]
        [--demo runs/parts-demo]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch

import polymodal
from _timing import alternate, parse_args
from bench_forward import SPEC

THROUGHPUT_BATCH = 64
LATENCY_TARGET = 0.7  # ONNX Runtime time / eager time at batch 1, at most
THROUGHPUT_TARGET = 1.3  # ONNX Runtime samples/s / eager samples/s at batch 64, at least
INT8_TARGET = 1.5  # int8 ONNX samples/s / fp32 ONNX samples/s at batch 64, at least
INT8_ACCURACY = 0.01  # int8 accuracy on the demo's held-out rows within this of fp32's


def inputs(layout, n: int, size: int) -> dict[str, torch.Tensor]:
    """A random batch of ``n`` raw rows in the exported form (no presence masks: all present)."""
    g = torch.Generator().manual_seed(n)
    tensors = {}
    for i in layout.data_inputs:
        shape = [n, *i.shape[1:]]
        if i.dtype == "int64":
            tensors[i.name] = torch.randint(0, 12, shape, generator=g)
        else:
            tensors[i.name] = torch.rand(shape, generator=g)
    return tensors


def session_of(path: Path, threads: int, device: torch.device):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def runners(model, layout, onnx_file: Path, pt2_file: Path, device: torch.device, threads: int):
    """name -> function(tensors) for eager PyTorch, ONNX Runtime and the ExportedProgram."""

    def batch_of(tensors):
        batch: dict = {}
        for i in layout.data_inputs:
            value = tensors[i.name].to(device)
            if i.key is None:
                batch[i.input] = value
            else:
                batch.setdefault(i.input, {})[i.key] = value
        return batch

    def eager(tensors):
        with torch.inference_mode():
            out = model(batch_of(tensors))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    session = session_of(onnx_file, threads, device)
    found = {"eager PyTorch": eager,
             "ONNX Runtime": lambda t: session.run(None, {k: v.numpy() for k, v in t.items()})}
    if device.type == "cpu":
        from polymodal._quantize import quantize

        int8_file = onnx_file.with_name("model.int8.onnx")
        quantize(onnx_file, int8_file)
        int8 = session_of(int8_file, threads, device)
        found["ONNX Runtime int8 (dynamic)"] = lambda t: int8.run(
            None, {k: v.numpy() for k, v in t.items()})
    if device.type == "cpu":
        program = torch.export.load(pt2_file).module()
        order = [i.name for i in layout.inputs]

        def exported(tensors):
            n = next(iter(tensors.values())).shape[0]
            with torch.inference_mode():
                return program(*[tensors.get(name, torch.ones(n, dtype=torch.bool)) for name in order])

        found["ExportedProgram (.pt2)"] = exported
    return found


def measure(candidates, tensors, repeats: int) -> dict[str, list[float]]:
    return alternate({name: (lambda run=run: run(tensors)) for name, run in candidates.items()},
                     repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of torch and ONNX Runtime alike (1 keeps a shared"
                        " machine's noise down)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", help="timm model in place of the photo's ResNet-18.")
    parser.add_argument("--demo", default="runs/parts-demo",
                        help="Folder of `make demo`'s model, for the int8 rows.")
    args = parse_args(parser, repeats=1, size=32, backbone="test_resnet", demo=None)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    import onnxruntime

    # `size` fixes the image size an export takes (a model trained on a table keeps its own).
    spec = copy.deepcopy(SPEC)
    spec["inputs"]["photo"]["adapter"]["size"] = args.size
    if args.backbone:
        spec["backbones"]["vision"] = {"type": "timm", "model": args.backbone}
    model = polymodal.build(spec, pretrained=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file, pt2_file = Path(tmp) / "model.onnx", Path(tmp) / "model.pt2"
        result = polymodal.export(model, onnx_file)
        polymodal.export(model, pt2_file)
        layout = result.layout
        candidates = runners(model.to(device), layout, onnx_file, pt2_file, device, args.threads)

        print(f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}),"
              f" onnxruntime {onnxruntime.__version__}, {args.threads} thread(s), device {device}")
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, {args.size} px;"
              f" ONNX file {onnx_file.stat().st_size / 1e6:.1f} MB (opset {layout.exporter['opset']}),"
              f" checked within {result.difference:.1g} of the model")
        latency = measure(candidates, inputs(layout, 1, args.size), args.repeats)
        throughput = measure(candidates, inputs(layout, THROUGHPUT_BATCH, args.size),
                             max(5, args.repeats // 2))
    print(f"\n{'':26} {'batch 1 latency':>16} {'vs eager':>9} {'batch 64 samples/s':>19} {'vs eager':>9}")
    base_latency = statistics.median(latency["eager PyTorch"])
    base_rate = THROUGHPUT_BATCH / statistics.median(throughput["eager PyTorch"])
    for name in candidates:
        ms = statistics.median(latency[name]) * 1e3
        rate = THROUGHPUT_BATCH / statistics.median(throughput[name])
        print(f"{name:26} {ms:14.2f}ms {ms / 1e3 / base_latency:8.2f}x {rate:19.1f} {rate / base_rate:8.2f}x")
    ort_latency = statistics.median(latency["ONNX Runtime"]) / base_latency
    ort_rate = THROUGHPUT_BATCH / statistics.median(throughput["ONNX Runtime"]) / base_rate
    print(f"\nONNX Runtime batch-1 latency {ort_latency:.2f}x eager:"
          f" {'meets' if ort_latency <= LATENCY_TARGET else 'MISSES'} the target of at most"
          f" {LATENCY_TARGET}x")
    print(f"ONNX Runtime batch-64 throughput {ort_rate:.2f}x eager:"
          f" {'meets' if ort_rate >= THROUGHPUT_TARGET else 'MISSES'} the target of at least"
          f" {THROUGHPUT_TARGET}x")
    print(f"({args.repeats} alternating rounds at batch 1, {max(5, args.repeats // 2)} at batch"
          f" {THROUGHPUT_BATCH}; medians)")
    if device.type == "cpu":
        int8_rows(args)


def vnni() -> str:
    """Whether this CPU has VNNI (int8 dot products), from /proc/cpuinfo."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return ", ".join(found) if found else "none (no avx512_vnni / avx_vnni)"


def demo_batches(runner, table: Path, rows: int) -> dict:
    """The first ``rows`` held-out rows, encoded by the model's codecs, as the files' feeds."""
    from polymodal._data.binding import Binding
    from polymodal._training.inference import RowReport, encoded_chunks, model_state

    chunks = encoded_chunks(table, Binding(runner.spec), model_state(runner, str(table)),
                            targets=False, batch_size=rows, policy="fail", report=RowReport())
    _, encoded = next(chunks)
    return {k: v.numpy() for k, v in runner.feeds(encoded.inputs, encoded.present or None).items()}


def accuracy(path: Path, table: Path) -> float:
    import csv

    predicted = polymodal.predict(path, table)["columns"]["decision"]
    with table.open(newline="") as handle:
        truth = [r["decision"] for r in csv.DictReader(handle)]
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def int8_rows(args) -> None:
    """fp32 ONNX against dynamic and static int8 files of the demo model."""
    from _demo import demo_model

    from polymodal._training.onnx_model import OnnxModel

    with tempfile.TemporaryDirectory() as tmp:
        model, train, test = demo_model(Path(args.demo or tmp), smoke=args.smoke)
        files = {"fp32 ONNX": Path(tmp) / "fp32.onnx", "int8 dynamic": Path(tmp) / "dyn.onnx",
                 "int8 static": Path(tmp) / "static.onnx"}
        polymodal.export(model, files["fp32 ONNX"])
        polymodal.export(model, files["int8 dynamic"], quantize="int8")
        polymodal.export(model, files["int8 static"], quantize="int8", calibration=train)
        feeds = demo_batches(OnnxModel.open(files["fp32 ONNX"]), test, THROUGHPUT_BATCH)
        sessions = {name: session_of(path, args.threads, torch.device("cpu"))
                    for name, path in files.items()}
        times = alternate({name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()},
                          repeats=max(5, args.repeats))
        scores = {name: accuracy(path, test) for name, path in files.items()}
        sizes = {name: path.stat().st_size / 1e6 for name, path in files.items()}
    print(f"\nint8 on the demo model ({model}), CPU VNNI: {vnni()}")
    print(f"{'':14} {'batch 64 rows/s':>16} {'vs fp32':>8} {'accuracy':>9} {'vs fp32':>8} {'MB':>6}")
    base = THROUGHPUT_BATCH / statistics.median(times["fp32 ONNX"])
    for name in files:
        rate = THROUGHPUT_BATCH / statistics.median(times[name])
        print(f"{name:14} {rate:16.0f} {rate / base:7.2f}x {scores[name]:9.4f}"
              f" {scores[name] - scores['fp32 ONNX']:+8.4f} {sizes[name]:6.2f}")
    for name in ("int8 dynamic", "int8 static"):
        gain = statistics.median(times["fp32 ONNX"]) / statistics.median(times[name])
        close = abs(scores[name] - scores["fp32 ONNX"]) <= INT8_ACCURACY
        print(f"{name}: {gain:.2f}x fp32 ONNX throughput, {'meets' if gain >= INT8_TARGET else 'MISSES'}"
              f" the target of at least {INT8_TARGET}x; accuracy {'within' if close else 'NOT within'}"
              f" {INT8_ACCURACY} of fp32")


if __name__ == "__main__":
    main()
