"""Pictures a person would look at, re-made from the records alone.

- ``accuracy_vs_time.png``: global accuracy against virtual time;
- ``traffic_vs_accuracy.png``: cumulative traffic against accuracy;
- ``timeline_round_N.png``: one bar per device (download, compute, upload, wait), sorted by completion.

``overlay_*`` variants draw several strategies on the same axes (used by comparisons).
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..core.files import write_atomic  # noqa: E402
from .records import evaluated, time_field  # noqa: E402


def save_figure(fig, path: Path) -> None:
    """A figure as PNG, written atomically (``core.files``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    write_atomic(path, buffer.getvalue())


LEVEL_STYLES = (":", "-.", (0, (1, 3)))  # the reference levels' line styles: one each, so at most three levels


def _curves(runs: dict[str, list[dict]], x, y, path: Path, xlabel: str, ylabel: str, title: str,
            target: float | None = None, levels: dict[str, float] | None = None) -> Path:
    """One line per run over its evaluated rounds, x(point) against y(point) (``records.RoundPoint``); the target
    and each labelled level (an accuracy in [0, 1], e.g. the base model's or chance) as horizontal lines, one
    line style each (``LEVEL_STYLES``)."""
    if levels and len(levels) > len(LEVEL_STYLES):
        raise ValueError(f"levels: at most {len(LEVEL_STYLES)} reference lines, got {len(levels)} ({', '.join(levels)})")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, records in runs.items():
        ev = evaluated(records)
        ax.plot([x(r) for r in ev], [y(r) for r in ev], marker="o", ms=3, label=name)
    if target is not None:
        ax.axhline(100 * target, ls="--", c="grey", lw=1, label=f"target {100 * target:.1f}%")
    for (label, level), style in zip((levels or {}).items(), LEVEL_STYLES):
        ax.axhline(100 * level, ls=style, c="black", lw=1, label=f"{label} {100 * level:.1f}%")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(runs: dict[str, list[dict]], path: Path, target: float | None = None,
                          levels: dict[str, float] | None = None, title: str | None = None) -> Path:
    """Accuracy against the runs' clock; ``levels``: up to three labelled reference accuracies (base model, chance)."""
    key = time_field(next(iter(runs.values()), []))
    clock = key.removesuffix("_time_s")
    return _curves(runs, lambda p: p.time_s, lambda p: 100 * p.accuracy, path, f"{clock} time (s)",
                   "dev accuracy (%)", title or f"Accuracy vs {clock} time", target, levels)


def plot_accuracy_vs_round(runs: dict[str, list[dict]], path: Path, title: str) -> Path:
    return _curves(runs, lambda p: p.round, lambda p: 100 * p.accuracy, path, "round", "dev accuracy (%)", title)


def plot_traffic_vs_accuracy(runs: dict[str, list[dict]], path: Path) -> Path:
    return _curves(runs, lambda p: 100 * p.accuracy, lambda p: p.traffic_bytes / 1e6, path, "dev accuracy (%)",
                   "cumulative traffic (MB, up + down)", "Traffic vs accuracy")


def plot_timeline(record: dict, path: Path) -> Path:
    """One horizontal bar per device: download, compute (forward + backward), upload, then waiting."""
    devs = sorted(record["devices"].items(), key=lambda kv: kv[1]["total_s"])
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(devs) + 1.6))
    parts = [("download_s", "download", "#4c72b0"), ("compute", "compute", "#dd8452"),
             ("upload_s", "upload", "#55a868"), ("other_s", "process start, model load", "#8172b2"),
             ("waiting_s", "wait", "#d9d9d9")]
    for row, (dev, d) in enumerate(devs):
        left = 0.0
        for key, label, color in parts:
            width = d["forward_s"] + d["backward_s"] if key == "compute" else d.get(key, 0.0)
            ax.barh(row, width, left=left, color=color, label=label if row == 0 else None)
            left += width
    ax.set_yticks(range(len(devs)))
    ax.set_yticklabels([f"{dev} {d['kind']} m{d['mode']}" + (f" k={d['depth']}" if "depth" in d else "") for dev, d in devs], fontsize=7)
    ax.set_xlabel("seconds of real time" if record.get("clock") == "real" else "seconds of virtual time")
    ax.set_title(f"{record['strategy']}: device timeline of round {record['round']} (sorted by completion)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def run_plots(records: list[dict], out_dir: Path, timeline_round: int | None = None) -> list[str]:
    name = records[0]["strategy"] if records else "run"
    made = [plot_accuracy_vs_time({name: records}, out_dir / "accuracy_vs_time.png"),
            plot_traffic_vs_accuracy({name: records}, out_dir / "traffic_vs_accuracy.png")]
    # the timeline of round 2 (or the first round after it in which some device answered)
    candidates = [r for r in records if r["devices"] and (r["round"] == timeline_round if timeline_round else r["round"] >= 2)]
    candidates = candidates or [r for r in records if r["devices"]]
    if candidates:
        rec = candidates[0]
        made.append(plot_timeline(rec, out_dir / f"timeline_round_{rec['round']}.png"))
    return [p.name for p in made]


def plot_bars(values: dict[str, float | None], ylabel: str, path: Path) -> Path:
    """One bar per strategy (a strategy that never reached the target shows no bar and says so)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    names = list(values)
    heights = [values[n] or 0.0 for n in names]
    bars = ax.bar(names, heights, color=[f"C{i}" for i in range(len(names))])
    for bar, n in zip(bars, names):
        label = "not reached" if values[n] is None else f"{values[n]:.1f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_speedup_vs_target(curves: dict, reference: str, path: Path) -> Path:
    """``reference``'s sustained speed-up over each other strategy against the target accuracy: geometric mean
    over seeds and its band (``metrics.comparison.speedup_curve``: 95% t interval on paired log ratios, or the
    seeds' range with fewer than 5 seeds); a target some seed never reached is drawn from the rest."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    drawn = 0
    for i, (name, points) in enumerate(curves.items()):
        pts = [(100 * t, iv) for t, iv in points if iv.n > 0]
        if not pts:
            continue
        drawn += 1
        xs = [x for x, _ in pts]
        ax.plot(xs, [iv.mean for _, iv in pts], marker="o", ms=3, c=f"C{i}", label=f"over {name}")
        ax.fill_between(xs, [iv.low for _, iv in pts], [iv.high for _, iv in pts], color=f"C{i}", alpha=0.18)
    ax.axhline(1.0, ls="--", c="grey", lw=1)
    ax.set_xlabel("target accuracy (%)")
    ax.set_ylabel(f"speed-up of {reference} (time to target)")
    n = max((iv.n for pts in curves.values() for _, iv in pts), default=0)
    band = next((iv.label for pts in curves.values() for _, iv in pts if iv.n), "range")
    ax.set_title(f"{reference}'s speed-up vs target (sustained crossing; n = {n} seeds, band: {band})", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:  # an empty figure says why rather than looking like a failed plot
        ax.text(0.5, 0.5, f"no target that {reference} and another strategy both reach", ha="center",
                va="center", transform=ax.transAxes, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
