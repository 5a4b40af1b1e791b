"""Issue 20's tables from the runs of benchmarks/headline.sh (and sensitivity.sh), from records alone.

    .venv/bin/python benchmarks/headline_report.py [--root benchmarks/results/headline]

Prints, and writes to <root>/report.md: the headline table (every seed where all four strategies finished),
the ablation table, the sensitivity table, LCD's predicted against realised round times, whether the runs
crossed a re-draw of power modes, and the comparison with the paper's figures. A seed is used only where
every strategy of a table has finished it; the tables show n.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

from legendfl.metrics import comparison
from legendfl.metrics.stats import MIN_SEEDS_FOR_CI, ratio_interval
from legendfl.metrics.summary import read_records

HEADLINE = ["legend", "fedlora", "hetlora", "fedadapter"]
ABLATION = ["legend", "legend-no-depth", "legend-no-rank", "legend-literal"]
CHANCE = 0.5  # SST-2 has two labels: every table's grid targets lie above it
PAPER = {"fedlora": "2.8x / 38.3% / 40.2%", "hetlora": "1.7x / 32.1% / 19.5%", "fedadapter": "1.6x / 30.0% / 11.0%"}


def finished(folder: Path) -> bool:
    return (folder / "summary.json").exists()


def load(sources: dict[str, Path], seeds=range(10)) -> dict[int, dict[str, list[dict]]]:
    """{seed: {name: records}} for every seed in which each source folder ``<src>/seed-<s>`` has finished."""
    out = {}
    for s in seeds:
        folders = {n: src / f"seed-{s}" / n for n, src in sources.items()}
        if all(finished(f) for f in folders.values()):
            out[s] = {n: read_records(f / "rounds.jsonl") for n, f in folders.items()}
    return out


def table(seeds: dict, title: str) -> str:
    if not seeds:
        return f"{title}: no seed has finished every strategy yet.\n"
    return comparison.markdown(comparison.over_seeds(seeds, chance=CHANCE), f"{title}: ")


def sensitivity(root: Path, base: Path) -> str:
    sens = root / "sensitivity"
    rows = [("headline settings (compute x1, first round L)", {"legend": base, "fedlora": base}),
            ("compute x0.5 (per-layer latencies halved)", {"legend": sens / "compute-x0.5/sst2/profile",
                                                           "fedlora": sens / "compute-x0.5/sst2/profile"}),
            ("compute x2 (per-layer latencies doubled)", {"legend": sens / "compute-x2/sst2/profile",
                                                          "fedlora": sens / "compute-x2/sst2/profile"}),
            ("LEGEND's first round at depth ceil(L/2)", {"legend": sens / "first-round-half/sst2/profile", "fedlora": base}),
            ("HetLoRA ranks 2-8 (headline)", {"legend": base, "hetlora": base}),
            ("HetLoRA ranks 4-16 (earlier default)", {"legend": base, "hetlora": sens / "hetlora-4-16/sst2/profile"})]
    lines = ["| setting | vs | n | headline target | speed-up of legend, headline target | speed-up, paper's rule | "
             "traffic reduction | waiting reduction | accuracy at equal time: legend / other (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    # every row over the same seeds: those in which every row's runs have finished (the headline's own runs
    # have more seeds than the sensitivity runs; a row over more seeds would not compare with the others)
    loaded = [(label, sources, load(sources)) for label, sources in rows]
    common = sorted(set.intersection(*(set(finished_seeds) for _, _, finished_seeds in loaded)))
    for label, sources, finished_seeds in loaded:
        seeds = {s: finished_seeds[s] for s in common}
        other = [n for n in sources if n != "legend"][0]
        if not seeds:
            lines.append(f"| {label} | {other} | 0 | not run yet | | | | | |")
            continue
        r = comparison.over_seeds(seeds, chance=CHANCE)
        iv = r["intervals"][other]
        red = lambda x: 1 - 1 / x  # noqa: E731
        head = "none" if r["headline_target"] is None else f"{100 * r['headline_target']:.1f}%"
        acc = (f"{r['intervals']['legend']['accuracy_equal_time'].format('{:.2f}', 100)} / "
               f"{iv['accuracy_equal_time'].format('{:.2f}', 100)}")
        lines.append(f"| {label} | {other} | {len(seeds)} | {head} | {iv['speedup_headline'].format('{:.2f}', suffix='x')} | "
                     f"{iv['speedup_paper'].format('{:.2f}', suffix='x')} | "
                     f"{iv['traffic_ratio'].map(red).format('{:.1f}', 100, '%') if iv['traffic_ratio'].n else '-'} | "
                     f"{iv['waiting_ratio'].map(red).format('{:.1f}', 100, '%')} | {acc} |")
    spread = ("95% Student-t intervals" if len(common) >= MIN_SEEDS_FOR_CI
              else f"fewer than {MIN_SEEDS_FOR_CI}: the seeds' range, not an interval")
    return (f"Sensitivity (LEGEND against one baseline, every row over seeds {', '.join(map(str, common)) or 'none'} "
            f"(n = {len(common)}; {spread}); each row's headline target by the grid rule on its own runs):\n\n"
            + "\n".join(lines) + "\n")


def lcd_prediction(seeds: dict) -> str:
    """Realised / predicted round time of LEGEND's rounds 2+ (round 1 has no prediction), and how often the
    slowest device was one that the fill had raised above its line-3 depth."""
    ratios, filled_slowest, rounds = [], 0, 0
    for runs in seeds.values():
        for rec in runs["legend"][1:]:
            agg = rec.get("aggregation", {})
            predicted = agg.get("predicted_round_time_s")
            if not predicted:
                continue
            ratios.append(rec["round_time_s"] / predicted)
            slowest = max(rec["devices"], key=lambda d: rec["devices"][d]["total_s"])
            filled_slowest += rec["devices"][slowest]["depth"] > agg.get("line3_depths", {}).get(slowest, 99)
            rounds += 1
    if not ratios:
        return "LCD prediction: no LEGEND rounds yet.\n"
    return (f"LCD's predicted round time against the realised one (LEGEND, rounds 2+, {rounds} rounds over "
            f"{len(seeds)} seeds): realised / predicted = {mean(ratios):.2f} on average ({min(ratios):.2f} to "
            f"{max(ratios):.2f}); the slowest device was one the fill had raised in {filled_slowest} of {rounds} rounds.\n")


def mode_switches(seeds: dict) -> str:
    changed, devices, total = 0, 0, 0
    for runs in seeds.values():
        rec = runs["legend"]
        if len(rec) < 21:
            continue
        total += 1
        before, after = rec[19]["devices"], rec[20]["devices"]
        devices += len(after)
        changed += sum(before[d]["mode"] != after[d]["mode"] for d in after if d in before)
    if not total:
        return "Mode switches: no run has reached round 21 yet.\n"
    return (f"Mode switches: every run lasts {len(next(iter(seeds.values()))['legend'])} rounds; at round 21 the fleet "
            f"re-drew power modes, and {changed} of {devices} device modes changed over {total} seeds.\n")


def next_to_paper(seeds: dict) -> str:
    if not seeds:
        return ""
    r = comparison.over_seeds(seeds, chance=CHANCE)
    red = lambda x: 1 - 1 / x  # noqa: E731
    lines = ["| LEGEND vs | paper: speed-up / traffic saved / waiting saved | here: speed-up, headline target | "
             "speed-up, paper's rule | traffic saved | waiting saved |", "|---|---|---|---|---|---|"]
    for name in HEADLINE[1:]:
        iv = r["intervals"][name]
        lines.append(f"| {name} | {PAPER[name]} | {iv['speedup_headline'].format('{:.2f}', suffix='x')} | "
                     f"{iv['speedup_paper'].format('{:.2f}', suffix='x')} | "
                     f"{iv['traffic_ratio'].map(red).format('{:.1f}', 100, '%') if iv['traffic_ratio'].n else '-'} | "
                     f"{iv['waiting_ratio'].map(red).format('{:.1f}', 100, '%')} |")
    gains = [mean(x["round_time_s"] for x in runs["fedlora"]) / mean(x["round_time_s"] for x in runs["legend"])
             for runs in seeds.values()]
    return ("\n".join(lines) + f"\n\nPer-round gain (FedLoRA's mean round time over LEGEND's): "
            f"{ratio_interval(gains).format('{:.2f}', suffix='x')} (n = {len(gains)}).\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).parent / "results" / "headline"))
    root = Path(ap.parse_args().root)
    base = root / "sst2" / "profile"
    head = load({n: base for n in HEADLINE})
    abl = load({n: base for n in ABLATION})
    partial = ""
    if not head:  # no seed has all four yet: the strategies that have finished seed 0, said as such
        done = [n for n in HEADLINE if finished(base / "seed-0" / n)]
        if len(done) > 1 and done[0] == "legend":
            partial = table(load({n: base for n in done}), f"PARTIAL (only {', '.join(done)} have finished): SST-2")
    report = "\n".join([
        table(head, "LEGEND vs the baselines, SST-2"), partial, table(abl, "Ablations, SST-2"), sensitivity(root, base),
        lcd_prediction(head or load({"legend": base})), mode_switches(head or load({"legend": base})),
        next_to_paper(head)])
    (root / "report.md").write_text(report)
    (root / "report_seeds.json").write_text(json.dumps({"headline": sorted(head), "ablation": sorted(abl)}))
    print(report)


if __name__ == "__main__":
    main()
