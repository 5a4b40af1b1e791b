"""The paper's pre-tests (section 2): LoRA position (Fig. 3), depth (Fig. 4), rank distribution (Fig. 5).

Accuracy comes from short federated runs of FedLoRA with the named layouts (``strategies/pretests.py``).
Fig. 4's cost side is measured on this machine: per-batch latency (forward + backward + AdamW step) and the
memory a training step holds, for LoRA depth 1..L at rank 8. Memory is measured with autograd's
saved-tensor hooks (bytes of activations kept for backward) plus trainable parameters, their gradients
and AdamW's two moments; that is the part that grows with depth (the frozen weights are shared and fixed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.lora_layout import LoraLayout
from ..metrics.records import evaluated, round_points
from ..metrics.summary import summarize


def measure_depth_costs(backbone, data, batch_size: int = 16, batches: int = 12, seed: int = 0) -> list[dict]:
    """Per-batch latency and step memory for every LoRA depth (rank 8, fp32), on real batches of ``data``
    (``experiments.profiling.time_layout``, the loop ``legendfl profile`` times with)."""
    from .profiling import time_layout

    L = backbone.num_layers
    gen = np.random.default_rng(seed)
    picked = [data.batch(gen.choice(len(data), batch_size, replace=False)) for _ in range(batches + 2)]
    rows = []
    for depth in range(1, L + 1):
        m = time_layout(backbone, LoraLayout.top(depth, [8] * L), picked, warmup=2, bf16=False, memory=True)
        rows.append({"depth": depth, "batch_latency_ms": m["step_ms"],
                     "memory_mb": (m["saved_bytes"] + m["state_bytes"]) / 2**20})
    return rows


def _save(fig, title: str, path: Path) -> str:
    import matplotlib.pyplot as plt

    from ..metrics.plots import save_figure

    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path.name


def pretest_figures(groups: dict[str, dict[str, list[dict]]], depth_costs: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    pos = groups.get("position", {})
    if pos:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for name, rec in pos.items():
            ev = evaluated(rec)
            a1.plot([p.time_s for p in ev], [100 * p.accuracy for p in ev], marker="o", ms=3,
                    label=name.removeprefix("fedlora-"))
        a1.set_xlabel("virtual time (s)"), a1.set_ylabel("dev accuracy (%)"), a1.legend(), a1.grid(alpha=0.3)
        names = list(pos)
        a2.bar([n.removeprefix("fedlora-") for n in names], [np.mean([p.round_time_s for p in round_points(pos[n])]) for n in names])
        a2.set_ylabel("mean round time (s)")
        made.append(_save(fig, "Fig. 3: LoRA position", out / "fig3_position.png"))
    dep = groups.get("depth", {})
    if dep or depth_costs:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        if dep:
            ds = sorted(dep, key=lambda n: int(n.rsplit("-", 1)[1]))
            a1.plot([int(n.rsplit("-", 1)[1]) for n in ds], [100 * summarize(dep[n])["final_accuracy"] for n in ds], marker="o",
                    label="final accuracy (%)")
            a1.set_ylabel("final dev accuracy (%)")
        if depth_costs:
            ax = a1.twinx()
            ax.plot([r["depth"] for r in depth_costs], [r["batch_latency_ms"] for r in depth_costs], "s--", c="C1",
                    label="per-batch latency (ms)")
            ax.set_ylabel("per-batch latency (ms, measured here)")
            a2.plot([r["depth"] for r in depth_costs], [r["memory_mb"] for r in depth_costs], marker="o", c="C2")
        a1.set_xlabel("LoRA depth"), a2.set_xlabel("LoRA depth"), a2.set_ylabel("training-step memory (MB)")
        made.append(_save(fig, "Fig. 4: LoRA depth", out / "fig4_depth.png"))
    rank = groups.get("rank", {})
    if rank:
        from ..metrics.plots import plot_accuracy_vs_round

        plot_accuracy_vs_round({n.removeprefix("fedlora-"): r for n, r in rank.items()}, out / "fig5_rank_distribution.png",
                               "Fig. 5: rank distribution (same total rank)")
        made.append("fig5_rank_distribution.png")
    return made


def pretest_table(groups: dict[str, dict[str, list[dict]]], depth_costs: list[dict]) -> str:
    lines = ["| group | configuration | final accuracy | best accuracy | mean round time (s) | traffic (MB) |", "|---|---|---|---|---|---|"]
    for group, runs in groups.items():
        for name, rec in runs.items():
            s = summarize(rec)
            lines.append(f"| {group} | {name.removeprefix('fedlora-')} | {100 * s['final_accuracy']:.2f}% | "
                         f"{100 * s['best_accuracy']:.2f}% | "
                         f"{s['mean_round_time_s']:.2f} | {s['traffic_bytes'] / 1e6:.1f} |")
    if depth_costs:
        lines += ["", "| LoRA depth | per-batch latency (ms) | training-step memory (MB) |", "|---|---|---|"]
        lines += [f"| {r['depth']} | {r['batch_latency_ms']:.1f} | {r['memory_mb']:.1f} |" for r in depth_costs]
    return "\n".join(lines) + "\n"
