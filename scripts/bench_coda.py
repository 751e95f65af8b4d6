"""CoDA-Net speed and memory: ``coda_simple9_cifar`` against the official unfold formulation.

The reference (written here, not in the package) materialises the dynamic weights as the official
code does: ``w = B(A ∗ x)`` as ``[N, C_in·k², D, H', W']``, the unfolded patches, their product summed
over the patch axis, divided by the squashing norm. Both variants share the same weights. Times are
interleaved medians in one process; peak memory is the growth of the RSS high-water mark (``VmHWM``) over one run, in a
fresh subprocess per variant and task (Linux).

    python scripts/bench_coda.py [--batch 64] [--size 32] [--threads 1] [--repeats 5]
    python scripts/bench_coda.py --train-step [--rank-scales 1 0.5 0.25]   # Fashion-MNIST training steps

``--train-step`` times one training step of ``coda_simple9_cifar(in_chans=2, rank_scale=s)`` on a
28×28 gray batch (forward, BCE, backward, Adam): the median over ``--repeats`` steps after one
warm-up, as wall time and as process CPU time (less disturbed by other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import median_ms

import bcos_zoo
from bcos_zoo.layers import CoDAConv2d

VARIANTS = ("bcos_zoo", "unfold")
TASKS = ("forward", "explain")


class UnfoldCoDAConv2d(CoDAConv2d):
    """The official formulation: explicit dynamic weights times unfolded patches, divided by the norm."""

    def forward(self, x: Tensor) -> Tensor:
        weights = self.weight_mod.weighting_f(x)  # [N, D·P, H', W']
        n, _, h, w = weights.shape
        weights = weights.view(n, -1, self.out_channels, h, w)  # [N, P, D, H', W']
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride).view(n, -1, 1, h, w)
        if self.detach:
            weights = weights.detach()
        norm = weights.square().sum(1).sqrt()
        norm = (1 + norm.square()) / norm if self.norm == "squash" else norm
        if self.detach:
            norm = norm.detach()
        return (patches * weights).sum(1) / norm


def build(variant: str, batch: int, size: int) -> tuple[torch.nn.Module, Tensor]:
    torch.manual_seed(0)
    model = bcos_zoo.create_model("coda_simple9_cifar").eval()
    if variant == "unfold":
        for m in model.modules():
            if isinstance(m, CoDAConv2d):
                m.__class__ = UnfoldCoDAConv2d
    x = bcos_zoo.AddInverse()(torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)))
    return model, x


def run(model: torch.nn.Module, x: Tensor, task: str) -> Tensor:
    if task == "forward":
        with torch.no_grad():
            return model(x)
    return model.explain(x).contribution_map


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_peak(variant: str, task: str, batch: int, size: int) -> float:
    """Run in the measuring subprocess: the RSS high-water mark's growth (MiB) over one run of ``task``,
    after a warm-up run on one image. Writing 5 to ``clear_refs`` resets the high-water mark to the
    current RSS (``ru_maxrss`` would not do: Linux carries it over from the parent across exec)."""
    model, x = build(variant, batch, size)
    run(model, x[:1], task)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run(model, x, task)
    return (_status_kib("VmHWM") - before) / 1024


def peak_mib(variant: str, task: str, batch: int, size: int, threads: int) -> float:
    """:func:`measure_peak` in a fresh interpreter (no allocator caches from the other variants)."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_coda as b, torch; "
        f"torch.set_num_threads({threads}); print(b.measure_peak({variant!r}, {task!r}, {batch}, {size}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def train_step_seconds(rank_scale: float, batch: int, repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of one Adam training step on gray 28×28 images (after one warm-up step)."""
    torch.manual_seed(0)
    model = bcos_zoo.create_model("coda_simple9_cifar", in_chans=2, rank_scale=rank_scale).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = bcos_zoo.AddInverse()(torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    target = F.one_hot(torch.arange(batch) % 10, 10).float()
    wall, cpu = [], []
    for _ in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall_s": round(statistics.median(wall[1:]), 2), "cpu_s": round(statistics.median(cpu[1:]), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-step", action="store_true", help="time training steps instead (in_chans=2, 28×28)")
    p.add_argument("--rank-scales", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.train_step:
        steps = {s: train_step_seconds(s, args.batch, args.repeats) for s in args.rank_scales}
        print(json.dumps({"batch": args.batch, "threads": args.threads, "rank_scale": steps}, indent=2))
        return
    models = {v: build(v, args.batch, args.size) for v in VARIANTS}
    ours, ref = run(*models["bcos_zoo"], "explain"), run(*models["unfold"], "explain")
    agreement = ((ours - ref).abs().max() / ref.abs().max()).item()
    fns = {f"{v}/{t}": (lambda v=v, t=t: run(*models[v], t)) for v in VARIANTS for t in TASKS}
    times = median_ms(fns, args.repeats)
    peaks = {f"{v}/{t}": peak_mib(v, t, args.batch, args.size, args.threads) for v in VARIANTS for t in TASKS}
    report = {"batch": args.batch, "size": args.size, "threads": args.threads, "explain_max_rel_diff": agreement}
    for t in TASKS:
        ms, mib = (times[f"bcos_zoo/{t}"], times[f"unfold/{t}"]), (peaks[f"bcos_zoo/{t}"], peaks[f"unfold/{t}"])
        report[t] = {
            "ms": dict(zip(VARIANTS, (round(v, 1) for v in ms))), "time_ratio": round(ms[0] / ms[1], 3),
            "peak_mib": dict(zip(VARIANTS, (round(v, 1) for v in mib))), "peak_ratio": round(mib[0] / mib[1], 3),
        }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
