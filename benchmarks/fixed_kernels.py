"""Is a machine-independent mode possible on x86 CPUs, and what does it cost?

Float results differ between CPUs because ATen and MKL pick their kernels by the instruction
sets a CPU has (README, "What identical numbers means"). This benchmark emulates two x86 CPUs on
this one, through the switches their libraries read to dispatch:

    this CPU    nothing set: ATen, MKL and oneDNN take this CPU's widest kernels
    AVX2 CPU    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
                (how a CPU without AVX-512 dispatches, e.g. AMD Zen 2 and 3)

in two modes:

    default     as the pipeline runs
    fixed       MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default: MKL's conditional numerical
                reproducibility path and ATen's unvectorized kernels, on either CPU

Each (mode, CPU) runs the embedded default up to y_gen (``snakemake --cores 1`` on
``results/ygen/train.parquet``: the synthetic data, the tiny model, SFT, the SFT model's greedy
answers) in a fresh directory, one thread per job, and the table gives the SFT and y_gen jobs'
times (their ``dppo-timing`` work) and digests of the SFT weights and of y_gen. A mode is
machine-independent on x86 as far as this shows when both CPUs give the same digests; its cost
is its time over the default mode's on the same CPU (one invocation, same machine). What it
cannot show: a CPU of another architecture (ARM has no MKL and other kernels), another glibc's
libm, another build of torch.

    python benchmarks/fixed_kernels.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import TIMING, machine, run_snakemake

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SWITCHES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CPUS = {
    "this CPU": {},
    "AVX2 CPU": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
MODES = {
    "default": {},
    "fixed": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"},
}
TARGETS = ("results/models/sft", "results/ygen/train.parquet")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def work_seconds(workdir: Path, rule: str) -> float:
    log = next((workdir / "logs" / rule).glob("*.log"))
    return json.loads(TIMING.search(log.read_text(errors="replace")).group(1))["work_s"]


def run(workdir: Path, switches: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_SWITCHES}
    env.update(switches, PYTHONWARNINGS="ignore")
    workdir.mkdir(parents=True, exist_ok=True)
    wall, _ = run_snakemake([*TARGETS, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
                             "--cores", "1", "--configfile", str(ROOT / "config.yaml")], workdir, env)
    results = workdir / "results"
    return {"wall_s": wall, "sft_s": work_seconds(workdir, "sft"), "ygen_s": work_seconds(workdir, "pregenerate"),
            "sft_weights": digest(results / "models" / "sft" / "model.safetensors"),
            "ygen": digest(results / "ygen" / "train.parquet")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    parent = args.keep or Path(tempfile.mkdtemp(prefix="dppo-fixed-kernels-"))
    print(f"# {machine()}; torch kernels here: "
          + subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True).stdout.strip())
    rows = {}
    for mode, mode_switches in MODES.items():
        for cpu, cpu_switches in CPUS.items():
            workdir = parent / f"{mode}-{cpu.split()[0].lower()}"
            rows[mode, cpu] = run(workdir, {**cpu_switches, **mode_switches})
            print(f"  ran {mode} on the {cpu} emulation in {rows[mode, cpu]['wall_s']:.0f} s", flush=True)
    print("\n| mode | CPU | SFT job s | y_gen job s | SFT weights | y_gen |\n| --- | --- | --- | --- | --- | --- |")
    for (mode, cpu), row in rows.items():
        print(f"| {mode} | {cpu} | {row['sft_s']:.1f} | {row['ygen_s']:.1f} | {row['sft_weights']} | {row['ygen']} |")
    print()
    for mode in MODES:
        same = len({(rows[mode, cpu]["sft_weights"], rows[mode, cpu]["ygen"]) for cpu in CPUS}) == 1
        print(f"{mode}: the two CPUs give {'the same' if same else 'different'} SFT weights and y_gen")
    for cpu in CPUS:
        fixed, default = rows["fixed", cpu], rows["default", cpu]
        print(f"fixed / default on the {cpu} emulation: SFT {fixed['sft_s'] / default['sft_s']:.2f}x, "
              f"y_gen {fixed['ygen_s'] / default['ygen_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
