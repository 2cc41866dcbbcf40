"""Realized vs theoretical speed-up of every method at its default knob, on this machine; writes
docs/performance.md.

Theoretical: reference GFLOPs / method GFLOPs (primary counter, one clip). Realized: reference latency /
method latency at the same batch, timed in strict alternation (reference, method, method, reference, ...)
so clock, thermal and background-load drift hit both models alike instead of masquerading as a speed-up;
the speed-up is the median of the per-round ratios of adjacent runs. Each method runs on its own default
backbone (`TokenMethod.default_backbone`) against that backbone unpruned, with the same weights.

    python benchmarks/realized_speedup.py                        # all methods, batch 1 and 8 -> docs/performance.md
    python benchmarks/realized_speedup.py --methods evad,sttm --batches 2 --repeats 2 --out /tmp/perf.md
    python benchmarks/realized_speedup.py --frames 8 --size 112   # smaller geometry (said in the output)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vidprune.measure.device import device_name
from vidprune.measure.flops import count_flops, example_input
from vidprune.registry import get_method
from vidprune.models import create_model

TOKEN_METHODS = ("random", "evad", "poguise", "sttm")
FRAME_METHODS = ("mads", "sllm")
TARGET = 0.85  # issue #7: latency speed-up >= 0.85 x FLOPs speed-up for token methods at batch 8, CPU
TARGET_BATCH = 8
REPO = Path(__file__).resolve().parents[1]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def build_pair(method: str, frames, size):
    """(backbone, reference, model) with identical backbone weights."""
    backbone = get_method(method).default_backbone
    torch.manual_seed(0)
    reference = create_model(backbone, "none", frames=frames, size=size).eval()
    model = create_model(backbone, method, frames=frames, size=size).eval()
    model.load_state_dict(reference.state_dict(), strict=False)
    return backbone, reference, model


def timed(model, video) -> float:
    start = time.perf_counter()
    model(video)
    return (time.perf_counter() - start) * 1000.0


def paired_timing(reference, model, video, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Latencies (ms) of `repeats` rounds; each round runs both models back to back, alternating which
    goes first, so a slow spell penalises both sides of a ratio."""
    ref_ms, method_ms = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            timed(reference, video), timed(model, video)
        for r in range(repeats):
            if r % 2 == 0:
                ref_ms.append(timed(reference, video))
                method_ms.append(timed(model, video))
            else:
                method_ms.append(timed(model, video))
                ref_ms.append(timed(reference, video))
    return ref_ms, method_ms


def measure(methods, batches, repeats, warmup, frames, size, log) -> list[dict]:
    rows = []
    for method in methods:
        backbone, reference, model = build_pair(method, frames, size)
        ref_gflops = count_flops(reference, counters=("torch",)).gflops
        method_gflops = count_flops(model, counters=("torch",)).gflops
        knob = get_method(method).knob
        knob_text = f"{knob.name}={model.method.keep:g}" if knob else "-"
        info = model.info
        for batch in batches:
            video = example_input(reference, batch)
            ref_ms, method_ms = paired_timing(reference, model, video, repeats, warmup)
            ratios = [r / m for r, m in zip(ref_ms, method_ms)]
            flops_x = ref_gflops / method_gflops
            lat_x = statistics.median(ratios)
            row = dict(method=method, backbone=backbone, geometry=f"{info.frames}x{info.size}", knob=knob_text,
                       batch=batch, gflops_ref=ref_gflops, gflops=method_gflops, speedup_flops=flops_x,
                       latency_ref_ms=statistics.median(ref_ms), latency_ms=statistics.median(method_ms),
                       speedup_latency=lat_x, realized=lat_x / flops_x)
            rows.append(row)
            log(f"{method:8s} {backbone:10s} batch {batch}: FLOPs x{flops_x:.2f}, latency x{lat_x:.2f} "
                f"({row['latency_ref_ms']:.0f} / {row['latency_ms']:.0f} ms), realized/theoretical {row['realized']:.2f}")
    return rows


def verdict(row: dict) -> str:
    if row["batch"] != TARGET_BATCH:
        return "- (reported only)"
    met = "yes" if row["realized"] >= TARGET else "no"
    return met if row["method"] in TOKEN_METHODS else f"{met} (frame method, no target)"


def render(rows, args, started: str, load_before: str, load_after: str, elapsed_s: float) -> str:
    geometry = "the methods' default geometry" if args.frames is None and args.size is None else \
        f"--frames {args.frames or 'default'} --size {args.size or 'default'} (smaller than the defaults)"
    lines = [
        "# Realized vs theoretical speed-up",
        "",
        "Written by `python benchmarks/realized_speedup.py` "
        f"(`--methods {','.join(args.methods)} --batches {','.join(map(str, args.batches))} "
        f"--repeats {args.repeats} --threads {args.threads}`); rerun it to refresh this page.",
        "",
        f"Machine: {device_name('cpu')} ({platform.machine()}), {usable_cores()} usable cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.system()}. Run started {started} UTC and took {elapsed_s / 60:.1f} min; load average "
        f"(1/5/15 min) {load_before} before and {load_after} after: a load well above the thread count means "
        "other jobs shared the cores and the absolute latencies are inflated (the paired ratios much less so).",
        "",
        f"Setup: CPU, fp32, eval mode, `torch.inference_mode()`, sdpa attention, {geometry}; every method on its "
        "default backbone at its default knob against the same backbone unpruned with the same weights. "
        f"{args.warmup} warm-up round(s), then {args.repeats} timed rounds per batch, each running the reference "
        "and the method back to back (alternating which goes first). GFLOPs: 1 multiply-accumulate = 1 FLOP, "
        "per clip (docs/measurement.md). speedup_flops = GFLOPs ref / GFLOPs method; speedup_latency = median "
        "over rounds of latency ref / latency method; realized = speedup_latency / speedup_flops. Target "
        f"(issue #7): realized >= {TARGET} for token methods ({', '.join(TOKEN_METHODS)}) at batch {TARGET_BATCH}; "
        "batch 1 and the frame methods are reported without a target.",
        "",
        "| method | backbone | geometry | knob | batch | GFLOPs ref | GFLOPs method | speedup_flops | latency ref (ms) "
        "| latency method (ms) | speedup_latency | realized / theoretical | meets 0.85 at batch 8 |",
        "|:---|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['backbone']} | {r['geometry']} | {r['knob']} | {r['batch']} | {r['gflops_ref']:.2f} "
            f"| {r['gflops']:.2f} | {r['speedup_flops']:.2f}x | {r['latency_ref_ms']:.0f} | {r['latency_ms']:.0f} "
            f"| {r['speedup_latency']:.2f}x | {r['realized']:.2f} | {verdict(r)} |")
    lines += ["", noise_note(rows), "", cuda_note()]
    return "\n".join(lines) + "\n"


def cuda_note() -> str:
    if torch.cuda.is_available():
        return (f"This run was on CPU; CUDA is available here ({torch.cuda.get_device_name(0)}): time it with "
                "`vidprune sweep --device cuda` (CUDA events, `--power` via NVML).")
    return ("No CUDA GPU on this machine: the CUDA paths (CUDA-event timing, NVML power, the CUDA GEMM peak, "
            "driver and clock probes) are covered by tests that skip without CUDA and have not been timed here.")


def noise_note(rows) -> str:
    """How much the same unpruned reference moved between methods' runs: the honest error bar on the ratios."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["geometry"], r["batch"]), []).append(r["latency_ref_ms"])
    spreads = [f"{b} {g} batch {n}: {min(v):.0f}-{max(v):.0f} ms over {len(v)} runs"
               for (b, g, n), v in groups.items() if len(v) > 1]
    text = ("Noise: each row times its own reference in alternation with the method, so the ratio is paired, "
            "but the reference itself moved between rows")
    if not spreads:
        return text + " (no reference was timed more than once in this run)."
    return (text + " (" + "; ".join(spreads) + "). A realized/theoretical ratio above 1.0 is such noise, not a "
            "method beating its FLOP count; read the ratios to about ±0.1.")


def csv_list(cast):
    return lambda text: [cast(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=csv_list(str), default=list(TOKEN_METHODS + FRAME_METHODS))
    parser.add_argument("--batches", type=csv_list(int), default=[1, TARGET_BATCH])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per method and batch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="torch intra-op threads")
    parser.add_argument("--frames", type=int, default=None, help="override every backbone's default frames")
    parser.add_argument("--size", type=int, default=None, help="override every backbone's default size")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_before, t0 = load_average(), time.perf_counter()
    rows = measure(args.methods, args.batches, args.repeats, args.warmup, args.frames, args.size,
                   lambda text: print(text, flush=True))
    text = render(rows, args, started, load_before, load_average(), time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
