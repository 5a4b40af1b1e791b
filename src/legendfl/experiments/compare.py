"""Side-by-side comparison: several strategies on the same task, seed, partition and fleet trace.

Every strategy sees the same device modes and bandwidth draws in the same round (a fleet state is a pure
function of (seed, round, device)) and the same data partition. Runs are sequential and resumable: a
strategy whose ``summary.json`` exists is not re-run, so re-running recomputes tables and figures only.

The table follows the paper's rule for the common target: the lowest final accuracy among the compared
strategies, unless a target is given. For the first strategy S and each other strategy X:
speed-up = time_X / time_S to target; traffic reduction = 1 - traffic_S / traffic_X; waiting reduction =
1 - waiting_S / waiting_X (mean waiting time over all rounds).

With ``seeds`` and/or ``cost_models`` (``compare_seeds``) every strategy runs once per seed (each seed
re-draws partition, fleet assignment and trace, initialisation) into ``<out>/<cost model>/seed-<s>/``;
the tables (``metrics.comparison``, protocol in ``metrics.protocol``) give time to a headline target
declared by a grid rule that does not depend on where runs stop (sustained, interpolated crossing), the
paper's rule next to it, accuracy at equal virtual time, a speed-up per grid target, and Student-t
intervals on paired log ratios (the seeds' range with fewer than 5 seeds); a figure draws the first
strategy's speed-up against the target accuracy with its interval band. Under every cost model after the first, a strategy whose
decisions do not read device timings is re-timed from the first model's run (``retiming``), not re-trained.

Compared names are registered strategies or presets (``legendfl strategies``): e.g. ``legend-no-depth``,
``legend-literal`` (Algorithm 1 as printed, the LCD ablation), ``fedlora-layers-d`` (a pre-test layout).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..core.files import write_atomic
from ..data.tasks import builtin_chance_accuracy
from ..metrics.comparison import compare_records, table_markdown, write_csv
from ..metrics.summary import read_records
from ..runtime.run_folder import changed_inputs, differing_settings, recorded_inputs
from . import PROFILES, shipped_profiles

log = logging.getLogger(__name__)


def run_config(base: dict, name: str, folder: Path) -> RunConfig:
    """The run configuration of a compared name (a registered strategy or preset, e.g. ``legend-no-depth``,
    ``legend-literal``, ``fedlora-layers-d``)."""
    return RunConfig.from_sources(base, {"strategy": name, "out_dir": str(folder)})


def settings_in(folder: Path, cfg: RunConfig) -> list[str]:
    """The settings in which the run kept in ``folder`` (its ``config.json``) differs from ``cfg``, and its input
    files that changed since it ran (``runtime/run_folder.py``)."""
    path = folder / "config.json"
    if not path.exists():
        return ["config.json (missing)"]
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return [f"config.json (unreadable: {err.msg})"]
    if not isinstance(old, dict):
        return ["config.json (not a table of options)"]
    new = cfg.to_json()
    return differing_settings(old, new) + changed_inputs(recorded_inputs(folder) or {}, new)


def _read_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_chance(folders) -> float:
    """The task's chance accuracy as the runs' ``summary.json`` records it; for runs from before it was recorded,
    a shipped task's (``config.json`` names the task, no data file); else 0 (no floor under the targets)."""
    fallback = 0.0
    for folder in folders:
        value = _read_object(Path(folder) / "summary.json").get("chance_accuracy")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        config = _read_object(Path(folder) / "config.json")
        if not fallback and not config.get("data_file") and isinstance(config.get("task"), str):
            fallback = builtin_chance_accuracy(config["task"]) or 0.0
    return fallback


def run_strategies(base: dict, strategies: list[str], out: Path,
                   retime_from: Path | None = None) -> dict[str, list[dict]]:
    """Run each strategy once into ``out/<strategy>`` (skipping finished ones); return their records.

    With ``retime_from``, a strategy whose decisions do not read device timings is re-timed from its run
    there (same seed, another cost model) instead of trained again.
    """
    from ..runtime.checkpoint import has_checkpoint
    from .retiming import decisions_use_time, retime_run

    runs = {}
    for name in strategies:
        folder = out / name
        cfg = run_config(base, name, folder)
        if (folder / "summary.json").exists() or has_checkpoint(folder):  # reuse or resume only the same settings
            differ = settings_in(folder, cfg)
            if differ:
                raise ValueError(f"{folder} holds a {name} run of other settings (differing: {', '.join(differ)}); "
                                 f"compare into another --out, or remove that folder")
        if (folder / "summary.json").exists():
            log.info(f"{name}: results exist in {folder}, not re-run")
        elif retime_from is not None and (retime_from / name / "summary.json").exists() and not decisions_use_time(cfg):
            retime_run(retime_from / name, folder, cfg.cost_model, cfg.fleet, overwrite=True)  # compare owns its folders
            log.info(f"{name}: re-timed under the {cfg.cost_model} cost model from {retime_from / name} "
                     f"(its decisions do not read timings)")
        else:
            from .runner import resume_run, run

            if has_checkpoint(folder):  # a run that was cut off: continue it to the same result
                log.info("%s: resuming the unfinished run in %s", name, folder)
                resume_run(folder)
            else:  # compare owns its strategy folders: a run without a checkpoint finished no round
                run(cfg, overwrite=True)
        runs[name] = read_records(folder / "rounds.jsonl")
    return runs


# the paper's figure numbers: Figs. 7/8 for the GLUE tasks, Figs. 9 (MMLU) and 10 (GSM-8K) for the decoder half
PAPER_FIGURES = {"mmlu": ("fig9a_accuracy_vs_time", "fig9b_time_to_target"),
                 "gsm8k": ("fig10a_accuracy_vs_time", "fig10b_time_to_target")}


def compare(base: dict, strategies: list[str], out: Path, *, target: float | None = None, ablation: list[str] | None = None,
            title: str = "") -> dict:
    """Run (or reuse) the strategies, then write table.md, table.csv and the figures into ``out``."""
    from ..metrics import comparison, plots

    out.mkdir(parents=True, exist_ok=True)
    runs = run_strategies(base, strategies, out)
    declared = target
    target, rows = compare_records(runs, target)
    md = table_markdown(target, rows, title)
    if len(runs) > 1:  # the protocol's table of the same runs: declared grid, headline target, equal time (one seed)
        protocol_result = comparison.over_seeds({base.get("seed", 0): runs}, declared,
                                                chance=recorded_chance(out / n for n in runs))
        md += "\n" + comparison.markdown(protocol_result, "The comparison protocol (metrics/protocol.py), ")
    write_atomic(out / "table.md", md)
    write_csv(target, rows, out / "table.csv")
    curve, bars = PAPER_FIGURES.get(base.get("task", ""), ("fig7_accuracy_vs_time", "fig8_time_to_target"))
    figures = [plots.plot_accuracy_vs_time(runs, out / f"{curve}.png", target),
               plots.plot_bars({r.strategy: r.time_to_target_s for r in rows}, "time to target (s)", out / f"{bars}.png"),
               plots.plot_bars({r.strategy: r.traffic_to_target_bytes and r.traffic_to_target_bytes / 1e6 for r in rows},
                               "traffic to target (MB)", out / "fig11_traffic_to_target.png"),
               plots.plot_bars({r.strategy: r.mean_waiting_s for r in rows}, "mean waiting time (s)", out / "fig12_waiting.png"),
               plots.plot_traffic_vs_accuracy(runs, out / "traffic_vs_accuracy.png")]
    if ablation:
        abl = {n: runs[n] for n in ablation if n in runs}
        figures.append(plots.plot_accuracy_vs_time(abl, out / "fig13_ablation.png", target))
    result = {"target_accuracy": target, "rows": [r.__dict__ for r in rows], "figures": [f.name for f in figures]}
    write_atomic(out / "comparison.json", json.dumps(result, indent=2))
    log.info(md)
    return result


def compare_seeds(base: dict, strategies: list[str], out: Path, *, seeds: list[int], cost_models: list[str],
                  target: float | None = None, ablation: list[str] | None = None, title: str = "") -> dict:
    """Every strategy per cost model and seed; tables with 95% CIs and the speed-up-vs-target figure."""
    from ..metrics import comparison, plots

    order = list(dict.fromkeys([*strategies, *(ablation or [])]))
    results = {}
    for i, cost in enumerate(cost_models):
        runs = {s: run_strategies({**base, "seed": s, "cost_model": cost}, order, out / cost / f"seed-{s}",
                                  retime_from=out / cost_models[0] / f"seed-{s}" if i else None) for s in seeds}
        folder = out / cost
        tables = {}
        for label, names in (("table", strategies), ("ablation", ablation or [])):
            if not names:
                continue
            chosen = {s: {n: runs[s][n] for n in names} for s in seeds}
            result = comparison.over_seeds(chosen, target,
                                           chance=recorded_chance(folder / f"seed-{s}" / n for s in seeds for n in names))
            md = comparison.markdown(result, f"{title}{label}, cost model {cost}: ")
            write_atomic(folder / f"{label}.md", md)
            write_atomic(folder / f"{label}.json", json.dumps(comparison.to_json(result), indent=1))
            finals = [v["final_accuracy"] for per in result["per_seed"].values() for v in per["strategies"].values()]
            targets = [round(x, 4) for x in np.arange(np.floor(200 * min(finals) - 12) / 200, max(finals) + 1e-9, 0.005)
                       if x > result["chance"] + 1e-9]
            curves = comparison.speedup_curve(chosen, targets)
            plots.plot_speedup_vs_target(curves, names[0], folder / f"speedup_vs_target_{label}.png")
            write_atomic(folder / f"speedup_vs_target_{label}.json", json.dumps(
                {n: [{"target": t, **iv.to_json()} for t, iv in pts] for n, pts in curves.items()}, indent=1))
            tables[label] = md
            log.info(md)
        plots.plot_accuracy_vs_time({n: runs[seeds[0]][n] for n in strategies}, folder / f"fig7_accuracy_vs_time_seed{seeds[0]}.png",
                                    title=f"{title}seed {seeds[0]}, cost model {cost}")
        results[cost] = tables
    return results


def load_profile(name_or_path: str) -> dict:
    """A profile: ``[compare]`` (tasks, strategies, ablation, or pre-test groups), ``[run]`` (RunConfig
    values; the string "none" stands for an unset value) and optional ``[hub_model]`` (task -> hub id)."""
    import tomllib

    path = Path(name_or_path)
    if not path.exists():
        path = PROFILES / f"{name_or_path}.toml"
    if not path.exists():
        raise ValueError(f"profile must be one of {shipped_profiles()} or a TOML file, got {name_or_path!r}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"profile {str(path)!r} is not valid TOML: {err}") from None
    for table in ("compare", "run", "hub_model"):
        if not isinstance(data.get(table, {}), dict):
            raise ValueError(f"profile {str(path)!r}: [{table}] must be a table, got {data[table]!r}")
    unknown = sorted(set(data) - {"compare", "run", "hub_model"})
    if unknown:
        raise ValueError(f"profile {str(path)!r}: unknown tables {unknown}; allowed: ['compare', 'hub_model', 'run']")
    data["run"] = {k: (None if v == "none" else v) for k, v in data.get("run", {}).items()}
    return data


def run_profile(profile: str, out: Path, *, tasks: list[str] | None = None, strategies: list[str] | None = None,
                target: float | None = None, hub: bool = False, overrides: dict | None = None,
                seeds: list[int] | None = None, cost_models: list[str] | None = None) -> dict:
    """Run a profile's comparison for each task into ``out/<task>``; pre-test profiles also write Figs. 3-5."""
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"target must be an accuracy in (0, 1], e.g. 0.85, got {target}")
    prof = load_profile(profile)
    spec = prof.get("compare", {})
    results = {}
    for task in tasks or spec.get("tasks", ["sst2"]):
        base = {**prof["run"], "task": task, **(overrides or {})}
        if hub and task in prof.get("hub_model", {}):
            base["model"] = prof["hub_model"][task]
        RunConfig.from_sources(base, {"strategy": "legend"})  # validate the shared settings before any run
        folder = out / task
        groups = {g: spec[g] for g in ("position", "depth", "rank") if g in spec}
        if groups and not strategies:
            results[task] = _pretests(base, groups, folder)
            continue
        names = strategies or spec.get("strategies", ["legend", "fedlora"])
        ablation = spec.get("ablation") if not strategies else None
        order = list(dict.fromkeys([*names, *(ablation or [])]))
        for name in order:  # every name and option valid before anything trains
            run_config(base, name, folder / name)
        if seeds or cost_models:
            results[task] = compare_seeds(base, names, folder, seeds=seeds or [base.get("seed", 0)],
                                          cost_models=cost_models or [base.get("cost_model", "profile")], target=target,
                                          ablation=ablation,
                                          title=f"{task} ({base.get('model')}, {base.get('num_devices')} devices), ")
            continue
        results[task] = compare(base, order, folder, target=target, ablation=ablation,
                                title=f"{task} ({base.get('model')}, {base.get('num_devices')} devices, "
                                      f"cost model {base.get('cost_model', 'profile')}): ")
        if ablation:  # the ablation table has LEGEND as its reference too
            t2, rows2 = compare_records({n: read_records(folder / n / "rounds.jsonl") for n in ablation}, target)
            write_atomic(folder / "ablation.md", table_markdown(t2, rows2, f"{task} ablation: "))
    return results


def _pretests(base: dict, groups: dict[str, list[str]], out: Path) -> dict:
    from .pretest_report import measure_depth_costs, pretest_figures, pretest_table

    out.mkdir(parents=True, exist_ok=True)
    runs = {g: run_strategies(base, names, out) for g, names in groups.items()}
    costs_path = out / "depth_costs.json"
    if "depth" in groups and not costs_path.exists():
        from ..data.tasks import load_task
        from ..models.backbone import load_backbone
        from ..models.tokenized import TokenizedData

        data = load_task(base["task"])
        backbone = load_backbone(base.get("model", "minilm"), data.num_labels, device=base.get("device", "auto"))
        costs = measure_depth_costs(backbone, TokenizedData(backbone.tokenizer, data.train[:2000], 64))
        write_atomic(costs_path, json.dumps(costs, indent=1))
    costs = json.loads(costs_path.read_text()) if costs_path.exists() else []
    table = pretest_table(runs, costs)
    write_atomic(out / "pretests.md", table)
    figures = pretest_figures(runs, costs, out)
    log.info(table)
    return {"figures": figures, "depth_costs": costs}
