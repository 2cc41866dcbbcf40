"""How fast a large `vidprune report` is written and opens in a real browser.

Builds a synthetic result frame (by default 10,000 rows across 50 configuration groups: 5 backbones x 10
device/dtype/batch settings, six methods with two option sets each over 16 keep rates, the unpruned row,
failed, noisy and count-only rows, and paper reference rows), writes the report and opens it from file://
in headless Chromium with the network off. Prints the file size, the time to write it and the page's
timings from the start of navigation: the page and its first tables on screen (DOMContentLoaded),
plotly.js compiled, the first group's plots drawn (the first screen complete: what "opens" means here) and
every group drawn (the others are drawn in the background, one per task, after the first screen). Issue 17's
target: under 3 s to open on a 2-core machine. Needs chromium, chromium-driver and selenium
(.ci/install_browser.sh, pip install 'vidprune[test]').

    python benchmarks/report_size.py                      # 10,000 rows, 50 groups
    python benchmarks/report_size.py --rows 2000 --groups 10 --keep /tmp/big.html --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vidprune.report.browser import headless_chromium, open_report, severe_console_messages, unavailable_reason
from vidprune.report.html import write_report
from vidprune.results import add_speedups, to_frame

BACKBONES = {"vit-s": 45.0, "vit-b": 180.0, "vit-l": 597.0, "timesformer-b": 196.0, "vivit-b": 284.0}
# device, device_name, dtype, batch, seconds per GFLOP (a made-up speed), energy measured
SETTINGS = [
    ("cpu", "Intel(R) Xeon(R) Processor", "fp32", 1, 8e-3, False),
    ("cpu", "Intel(R) Xeon(R) Processor", "fp32", 8, 6e-3, False),
    ("cpu", "AMD EPYC 7763", "fp32", 1, 5e-3, False),
    ("cuda", "NVIDIA H100 80GB HBM3", "fp16", 1, 4e-5, True),
    ("cuda", "NVIDIA H100 80GB HBM3", "fp16", 32, 1.5e-5, True),
    ("cuda", "NVIDIA H100 80GB HBM3", "bf16", 1, 4e-5, True),
    ("cuda", "NVIDIA GeForce RTX 4090", "fp16", 1, 6e-5, True),
    ("cuda", "NVIDIA GeForce RTX 4090", "fp32", 1, 1.2e-4, True),
    ("cuda", "Orin (nvgpu)", "fp16", 1, 9e-4, True),
    ("cuda", "Orin (nvgpu)", "fp32", 1, 2e-3, True),
]
METHODS = {"evad": ["{\"layers\": \"4,7,10\", \"w_kf\": 4.0}", "{\"layers\": \"3,6,9\", \"w_kf\": 2.0}"],
           "random": ["{\"keyframe\": false, \"layers\": \"4,7,10\"}", "{\"keyframe\": true, \"layers\": \"4,7,10\"}"],
           "poguise": ["{\"switch\": \"po\"}", "{\"switch\": \"guise\"}"],
           "sttm": ["{\"layers\": \"0\"}", "{\"layers\": \"2\"}"],
           "mads": ["{\"threshold\": 0.2}", "{\"threshold\": 0.4}"],
           "sllm": ["{\"stride\": 2}", "{\"stride\": 3}"]}


def synthetic_results(rows: int = 10_000, groups: int = 50, seed: int = 0) -> pd.DataFrame:
    """`rows` result rows in `groups` configurations, shaped like real sweep tables (every schema column)."""
    rng = np.random.default_rng(seed)
    configs = [(b, s) for b in BACKBONES for s in SETTINGS][:groups]
    backbones = sorted({b for b, _ in configs})
    references_per_backbone = max(1, rows // 200 // len(backbones))
    per_group = (rows - references_per_backbone * len(backbones)) // len(configs)
    extra = rows - references_per_backbone * len(backbones) - per_group * len(configs)
    out = []
    for g, (backbone, (device, name, dtype, batch, speed, energy)) in enumerate(configs):
        base = BACKBONES[backbone]
        file = f"results/{backbone}_{device}_{dtype}_b{batch}_{g % 7}.csv"
        env = {"env_threads": 2 if device == "cpu" else 8, "env_platform": "Linux-6.8-x86_64",
               "env_driver_version": "" if device == "cpu" else "550.54.15",
               "env_python_version": "3.11.9", "env_cpu_count": 16}
        common = dict(backbone=backbone, frames=16, size=224, batch=batch, throughput_batch=batch, device=device,
                      device_name=name, dtype=dtype, autocast=False, attention="sdpa", compile=False,
                      params_m=base / 2.1, source="measured", torch_version="2.13.0", vidprune_version="0.1.0",
                      git_sha="302156c", result_file=file, seed=0, **env)
        group_rows = [dict(common, method="none", keep=1.0, knob="", options="{}", gflops=base)]
        knob_rows = []
        for method, option_sets in METHODS.items():
            for o, options in enumerate(option_sets):
                for keep in np.linspace(0.2, 0.95, 16):
                    flops = base * (0.12 + 0.88 * keep) * (1 + 0.02 * o)
                    knob_rows.append(dict(common, method=method, knob="rho", keep=round(float(keep), 3),
                                          options=options, gflops=flops))
        n_measured = per_group + (1 if g < extra else 0) - 1
        # keep rows round-robin over methods, so a smaller benchmark still has every method
        order = np.argsort(np.arange(len(knob_rows)) % 16 * 100 + np.arange(len(knob_rows)) // 16, kind="stable")
        picked = [knob_rows[i] for i in order[:max(0, n_measured - 6)]]
        while len(picked) < n_measured - 6:
            picked.append(dict(knob_rows[len(picked) % len(knob_rows)]))
        group_rows += picked
        for r, row in enumerate(group_rows):
            keep, flops = row["keep"], row["gflops"]
            latency = flops * speed * 1000 * (1.15 - 0.15 * keep) * rng.uniform(0.97, 1.08)
            iqr = latency * rng.uniform(0.01, 0.16)
            quality = 1 - 0.5 * (1 - keep) ** 2 - rng.uniform(0, 0.03)
            row.update(status="ok", latency_ms=latency, latency_iqr_ms=iqr, latency_mean_ms=latency * 1.01,
                       noisy=bool(iqr > 0.1 * latency), repeats=20, warmup=5, throughput=batch * 1000 / latency,
                       peak_mem_mib=base * 4 * (0.4 + 0.6 * keep), agreement=min(1.0, quality + 0.02),
                       cosine=min(1.0, quality + 0.05), accuracy=80 * quality,
                       energy_j_per_clip=latency * 0.25 / 1000 if energy else np.nan,
                       tokens_per_block=",".join(str(int(1568 * keep ** (i // 4))) for i in range(12)),
                       tokens_final=int(1568 * keep ** 3),
                       notes="thop reads less: it hooks modules only and misses the attention matmuls",
                       timestamp=f"2026-11-22T09:{r // 60 % 60:02d}:{r % 60:02d}Z")
        for i in range(4):  # failed points: no numbers, an error
            failed = dict(knob_rows[i * 7 % len(knob_rows)])
            failed.update(status="oom" if i % 2 else "failed", gflops=np.nan,
                          error="CUDA out of memory" if i % 2 else "RuntimeError: shape mismatch")
            group_rows.append(failed)
        for i in range(2):  # count-only points: GFLOPs but nothing timed
            count_only = dict(knob_rows[(i * 11 + 3) % len(knob_rows)], status="ok")
            count_only["keep"] = round(count_only["keep"] + 0.001, 3)
            group_rows.append(count_only)
        out += group_rows
    for backbone in backbones:
        for i in range(references_per_backbone):
            keep = 1.0 if i == 0 else 0.9 - 0.6 * i / references_per_backbone
            out.append(dict(method="none" if i == 0 else "evad", backbone=backbone, keep=keep, status="reference",
                            device="paper", source="paper: EVAD Table 2a", gflops=BACKBONES[backbone] * (0.12 + 0.88 * keep),
                            accuracy=80 * (1 - 0.4 * (1 - keep) ** 2), reference_note="K400 top-1, 16x224",
                            result_file="results/recipes.csv"))
    df = add_speedups(to_frame(out).drop(columns=["speedup_flops", "speedup_latency"]))
    return df.iloc[:rows].reset_index(drop=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1, help="open the page this many times (fresh browser each)")
    parser.add_argument("--keep", type=Path, default=None, help="write the report here (default: a temporary file)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()

    df = synthetic_results(args.rows, args.groups)
    out = args.keep or Path(tempfile.mkdtemp(prefix="vidprune-report-")) / "report.html"
    start = time.perf_counter()
    write_report(df, out, title=f"vidprune report: {len(df)} synthetic rows")
    write_s = time.perf_counter() - start
    result = {"rows": len(df), "groups": args.groups, "file": str(out), "size_mb": out.stat().st_size / 1e6,
              "write_s": write_s}
    reason = unavailable_reason()
    if reason:
        result["browser"] = f"not measured: {reason}"
    else:
        runs = []
        for _ in range(args.repeats):
            with headless_chromium() as driver:
                timings = open_report(driver, out)
                timings["console_errors"] = severe_console_messages(driver)
            runs.append(timings)
        result["browser"] = runs
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['rows']} rows, {args.groups} groups: {result['size_mb']:.1f} MB written in {write_s:.2f} s ({out}); "
          f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if isinstance(result["browser"], str):
        print(result["browser"])
        return 0
    for run in result["browser"]:
        print(f"opened in headless Chromium: page and tables {run['dom_content_loaded_ms'] / 1000:.2f} s, "
              f"plotly.js ready {run['plotly_ready_ms'] / 1000:.2f} s, first group drawn {run['first_group_ms'] / 1000:.2f} s, "
              f"all {run['groups']} groups drawn {run['all_groups_ms'] / 1000:.2f} s"
              + (f"; console errors: {run['console_errors']}" if run["console_errors"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
