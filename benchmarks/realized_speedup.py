"""Realized vs theoretical speed-up of token methods on this machine.

Theoretical: reference GFLOPs / method GFLOPs (primary counter). Realized: reference latency / method
latency, timed in strict A/B/A/B alternation (as TorchDynamo's and cuTile's paired benchmarks do) so
clock, thermal and background-load drift hit every model alike instead of masquerading as a speed-up.

    python benchmarks/realized_speedup.py --backbone vit-b --methods evad,random --keep 0.7 --batch 4
    python benchmarks/realized_speedup.py ... --markdown docs/performance-evad.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from vidprune.measure.device import device_name, resolve_device, synchronize
from vidprune.measure.flops import count_flops, example_input
from vidprune.registry import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit-b")
    parser.add_argument("--methods", default="evad,random")
    parser.add_argument("--keep", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="timed A/B rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    names = ["none"] + [m for m in args.methods.split(",") if m]
    models = {}
    reference = create_model(args.backbone, "none").eval()
    for name in names:
        model = reference if name == "none" else create_model(args.backbone, name, args.keep).eval()
        if model is not reference:
            model.load_state_dict(reference.state_dict(), strict=False)
        models[name] = model
    gflops = {name: count_flops(model, counters=("torch",)).gflops for name, model in models.items()}
    for model in models.values():
        model.to(device)
    video = example_input(reference, args.batch, device=device)

    def run(model) -> float:
        synchronize(device)
        start = time.perf_counter()
        model(video)
        synchronize(device)
        return (time.perf_counter() - start) * 1000.0

    times = {name: [] for name in names}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for model in models.values():
                run(model)
        for _ in range(args.rounds):
            for name, model in models.items():
                times[name].append(run(model))

    ref_ms = statistics.median(times["none"])
    lines = [
        f"Machine: {device_name(device)} ({platform.machine()}), {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, device {device}. {args.backbone}, batch {args.batch}, fp32, sdpa attention, "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up round(s).",
        "",
        "| method | keep | GFLOPs | FLOPs speed-up | latency (ms, median) | latency speed-up | realized / theoretical |",
        "|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        ms = statistics.median(times[name])
        flops_x = gflops["none"] / gflops[name]
        lat_x = ref_ms / ms
        keep = "1.0" if name == "none" else f"{args.keep:g}"
        lines.append(f"| {name} | {keep} | {gflops[name]:.2f} | {flops_x:.2f}x | {ms:.0f} | {lat_x:.2f}x | "
                     f"{lat_x / flops_x:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
