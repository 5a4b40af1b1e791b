"""Time to target (first touch, sustained and interpolated), the comparison protocol, intervals, tables over seeds."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from legendfl.metrics import protocol
from legendfl.metrics.comparison import markdown, over_seeds, seed_values, speedup_curve
from legendfl.metrics.plots import plot_accuracy_vs_time, plot_speedup_vs_target
from legendfl.metrics.stats import bootstrap_ci, ratio_interval, t_interval, t_quantile
from legendfl.metrics.records import round_points
from legendfl.metrics.summary import crossing, summarize


def curve(points, waiting=1.0):
    """Records from (time, accuracy, traffic) points, one evaluated round each."""
    return [{"round": i + 1, "virtual_time_s": t, "accuracy": a, "traffic_bytes": b, "mean_waiting_s": waiting,
             "round_time_s": 1.0} for i, (t, a, b) in enumerate(points)]


def test_sustained_crossing_interpolates_within_the_round():
    rec = curve([(10, 0.70, 100), (20, 0.80, 200), (30, 0.86, 300), (40, 0.90, 400)])
    # 0.83 lies between 0.80 (t=20) and 0.86 (t=30): halfway
    assert crossing(rec, 0.83) == pytest.approx(25.0)
    assert crossing(rec, 0.83, "traffic") == pytest.approx(250.0)
    assert crossing(rec, 0.83, rule="first") == 30  # the paper's rule: the end of the first round at or above
    assert crossing(rec, 0.80) == pytest.approx(20.0)  # exactly on an evaluation
    assert crossing(rec, 0.95) is None and crossing(rec, 0.95, rule="first") is None
    assert crossing(rec, 0.60) == 10  # reached at the first evaluation: nothing before it to interpolate from


def test_sustained_crossing_waits_for_the_last_dip():
    rec = curve([(10, 0.84, 1), (20, 0.80, 2), (30, 0.85, 3), (40, 0.82, 4), (50, 0.88, 5), (60, 0.87, 6)])
    assert crossing(rec, 0.83, rule="first") == 10
    # stays >= 0.83 only from t=50 on; interpolated between (40, 0.82) and (50, 0.88)
    assert crossing(rec, 0.83) == pytest.approx(40 + (0.83 - 0.82) / (0.88 - 0.82) * 10)
    assert crossing(curve([(10, 0.9, 1), (20, 0.8, 2)]), 0.85) is None  # ends below: never sustained
    with pytest.raises(ValueError, match="rule must be one of"):
        crossing(rec, 0.8, rule="best")
    rec[2]["accuracy"] = None  # rounds without evaluation are skipped
    assert crossing(rec, 0.83) == pytest.approx(40 + (0.83 - 0.82) / (0.88 - 0.82) * 10)


def test_summary_reports_both_rules():
    s = summarize(curve([(10, 0.70, 100), (20, 0.80, 200), (30, 0.86, 300)]), 0.83)
    assert s["time_to_target_s"] == 30 and s["time_to_target_sustained_s"] == pytest.approx(25.0)
    assert s["traffic_to_target_bytes"] == 300 and s["traffic_to_target_sustained_bytes"] == pytest.approx(250.0)


@given(value=st.floats(-1e6, 1e6, allow_nan=False), n=st.integers(1, 12))
def test_intervals_of_a_constant_series_have_zero_width(value, n):
    for iv in (bootstrap_ci([value] * n), t_interval([value] * n)):
        assert iv.mean == iv.low == iv.high == value and iv.n == n and iv.half_width == 0


def test_bootstrap_ci_brackets_the_mean_and_counts_missing():
    iv = bootstrap_ci([1.0, 2.0, 3.0, None])
    assert iv.mean == pytest.approx(2.0) and iv.n == 3 and iv.missing == 1
    assert 1.0 <= iv.low < 2.0 < iv.high <= 3.0
    assert bootstrap_ci([1.0, 2.0, 3.0]) == bootstrap_ci([1.0, 2.0, 3.0])  # fixed resampling seed
    assert bootstrap_ci([None, None]).n == 0 and bootstrap_ci([None]).format() == "-"
    assert "(3/4)" in iv.format()
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=1.5)


def test_t_quantiles_and_intervals_by_hand():
    # tables of Student's t: t_0.975 with 2, 4, 9 degrees of freedom
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-5)
    assert t_quantile(0.025, 9) == pytest.approx(-2.262157, abs=1e-5)
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sd sqrt(2.5)
    iv = t_interval(values)
    assert iv.method == "t" and iv.label == "95% t-CI" and iv.n == 5
    assert iv.half_width == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    # fewer than 5 seeds: the range, called a range
    few = t_interval([1.0, 2.0, 4.0, None])
    assert (few.method, few.label, few.low, few.high, few.n, few.missing) == ("range", "range", 1.0, 4.0, 3, 1)
    # ratios on the log scale: the geometric mean, an interval symmetric in log
    r = ratio_interval([1.0, 2.0, 4.0, 2.0, 2.0])
    assert r.mean == pytest.approx(2.0) and r.low * r.high == pytest.approx(4.0)
    # the three FedLoRA ratios: a range of three seeds, and their t interval were it computed
    assert ratio_interval([1.53, 1.90, 2.06]).format() == "1.82 [1.53, 2.06]"
    t3 = ratio_interval([1.53, 1.90, 2.06], min_n=2)
    assert t3.low == pytest.approx(1.24, abs=0.01) and t3.high == pytest.approx(2.66, abs=0.01)


def test_log_ratio_t_interval_covers_a_known_ratio_at_its_nominal_rate():
    """2,000 simulated experiments of 5 seeds, each seed's speed-up = 2 x lognormal noise (sd 0.3 on the log
    scale): the paired log-ratio t interval covers the true ratio 93-97% of the time; the percentile
    bootstrap of the mean ratio, the tables' earlier method, covers it far less often."""
    gen = np.random.default_rng(20)
    true, covered, boot_covered, experiments = 2.0, 0, 0, 2000
    for _ in range(experiments):
        ratios = true * np.exp(gen.normal(0.0, 0.3, size=5))
        iv = ratio_interval(ratios.tolist())
        covered += iv.low <= true <= iv.high
        b = bootstrap_ci(np.log(ratios).tolist(), resamples=400, seed=int(gen.integers(1 << 30)))
        boot_covered += math.exp(b.low) <= true <= math.exp(b.high)
    assert 0.93 <= covered / experiments <= 0.97
    assert boot_covered / experiments < 0.90


def test_the_paper_rule_measures_the_cut_off_the_protocol_does_not():
    """A hand-made pair: B learns as fast as A to 78.7% by t = 20 and then sits at 78.9% until its final
    evaluation (79.0%) at t = 100; A goes on to 80%. The paper's rule takes B's final 79.0% as the target,
    which B first touches at its last round: a 5x speed-up that only measures where B was cut off. The
    grid rule takes 78.5% (B sustains it long before its last quarter): 1.05x."""
    a = curve([(10, 0.75, 10), (20, 0.79, 20)] + [(t, 0.80, t) for t in range(30, 101, 10)])
    b = curve([(10, 0.70, 10), (20, 0.787, 20)] + [(t, 0.789, t) for t in range(30, 91, 10)] + [(100, 0.790, 100)])
    seeds = {0: {"A": a, "B": b}}
    result = over_seeds(seeds)
    per = result["per_seed"][0]
    assert per["paper_target"] == pytest.approx(0.790)
    assert per["strategies"]["B"]["speedup_paper"] == pytest.approx(100 / 20)
    assert result["headline_target"] == pytest.approx(0.785)
    # sustained crossings of 78.5%: A between (10, 0.75) and (20, 0.79), B between (10, 0.70) and (20, 0.787)
    t_a, t_b = 10 + 0.035 / 0.04 * 10, 10 + 0.085 / 0.087 * 10
    assert per["strategies"]["A"]["time_headline_s"] == pytest.approx(t_a)
    assert per["strategies"]["B"]["speedup_headline"] == pytest.approx(t_b / t_a)
    assert result["intervals"]["B"]["speedup_headline"].mean == pytest.approx(1.054, abs=0.001)
    # accuracy at equal time (both end at t = 100) needs no target at all; B had plateaued, A too
    assert per["equal_time_s"] == 100 and per["strategies"]["B"]["accuracy_equal_time"] == pytest.approx(0.790)
    assert result["plateaued"] == {"A": 1, "B": 1}
    table = markdown(result)
    assert "Headline target: 78.5%" in table and "mean [range] over n = 1 seeds (0; fewer than 5" in table


def test_equal_time_and_mean_accuracy_by_hand():
    fast = curve([(5, 0.60, 1), (10, 0.80, 2)])  # ends at t = 10
    slow = curve([(8, 0.50, 1), (16, 0.70, 2), (24, 0.90, 3)])
    eq = protocol.equal_time({"fast": fast, "slow": slow})
    assert eq["time_s"] == 10 and eq["window_start_s"] == 8  # every strategy has a model from t = 8 on
    assert eq["accuracy"] == {"fast": 0.80, "slow": 0.50}
    # over [8, 10]: fast holds 0.60 for 2 s then 0.80 at t = 10 (zero length); slow holds 0.50
    assert eq["mean_accuracy"]["fast"] == pytest.approx(0.60) and eq["mean_accuracy"]["slow"] == pytest.approx(0.50)
    assert protocol.mean_accuracy(slow, 8, 24) == pytest.approx((0.5 * 8 + 0.7 * 8) / 16)
    assert protocol.accuracy_at(slow, 7.9) is None
    assert protocol.plateaued(curve([(1, 0.80, 1), (2, 0.803, 2), (3, 0.805, 3)]))
    assert not protocol.plateaued(curve([(1, 0.79, 1), (2, 0.803, 2), (3, 0.805, 3)]))


def test_tables_over_seeds_by_hand():
    # seed 0: S reaches 0.8 at 20 s, X at 40 s (speed-up 2); seed 1: 30 s vs 90 s (3)
    seeds = {
        0: {"S": curve([(10, 0.70, 100), (20, 0.80, 200), (30, 0.85, 300)], 1.0),
            "X": curve([(20, 0.70, 300), (40, 0.80, 500), (60, 0.80, 800)], 4.0)},
        1: {"S": curve([(15, 0.60, 100), (30, 0.80, 200), (45, 0.82, 250)], 2.0),
            "X": curve([(45, 0.70, 400), (90, 0.80, 1000), (135, 0.81, 2000)], 4.0)},
    }
    per0 = seed_values(seeds[0], 0.80)
    assert per0["paper_target"] == 0.80  # the lowest final accuracy in that seed
    assert per0["strategies"]["X"]["speedup_headline"] == pytest.approx(2.0)
    assert per0["strategies"]["S"]["speedup_headline"] == pytest.approx(1.0)
    assert per0["strategies"]["X"]["traffic_ratio"] == pytest.approx(500 / 200)
    assert per0["strategies"]["X"]["waiting_ratio"] == pytest.approx(4.0 / 1.0)
    result = over_seeds(seeds)
    # the grid rule: every run sustains 80% before the last quarter of its run (X: t = 40 <= 0.75 x 60 in seed 0,
    # 90 <= 0.75 x 135 in seed 1); X never reaches 80.5% in seed 0
    assert result["headline_target"] == pytest.approx(0.80)
    assert {s: v["paper_target"] for s, v in result["per_seed"].items()} == {0: 0.80, 1: 0.81}
    # seed 1, paper's rule (target 0.81, first touch): S at 45, X at 135 -> 3x
    assert result["per_seed"][1]["strategies"]["X"]["speedup_paper"] == pytest.approx(3.0)
    iv = result["intervals"]["X"]["speedup_headline"]
    assert iv.mean == pytest.approx(math.sqrt(2.0 * 3.0)) and iv.n == 2 and iv.method == "range"
    assert (iv.low, iv.high) == pytest.approx((2.0, 3.0))
    assert result["intervals"]["S"]["speedup_headline"].half_width == 0
    assert result["intervals"]["X"]["traffic_ratio"].map(lambda r: 1 - 1 / r).mean == pytest.approx(
        1 - 1 / math.sqrt(2.5 * 5.0))
    curves = speedup_curve(seeds, [0.70, 0.80, 0.90])
    assert [iv.n for _, iv in curves["X"]] == [2, 2, 0]  # nobody sustains 0.90
    assert curves["X"][1][1].mean == pytest.approx(math.sqrt((40 / 20) * (90 / 30)))
    table = markdown(result)
    assert "Headline target: 80.0%" in table and "| X | " in table
    assert "| 80.0%* | 2.45x [2.00, 3.00] |" in table and "| 80.5%" not in table  # the grid table stops at 80%


def test_the_grid_table_goes_on_past_a_strategy_that_stops_early():
    """Y stays near chance (55%), so the headline target is where Y stops; S and X are still compared above it,
    and Y's cells say in how many seeds it reaches the target instead of a ratio over the seeds that happen to."""
    seeds = {
        0: {"S": curve([(10, 0.60, 1), (20, 0.80, 2), (30, 0.86, 3)]),
            "X": curve([(20, 0.60, 1), (40, 0.80, 2), (60, 0.84, 3)]),
            "Y": curve([(5, 0.55, 1), (10, 0.55, 2), (15, 0.62, 3)])},
        1: {"S": curve([(10, 0.70, 1), (20, 0.85, 2), (30, 0.85, 3)]),
            "X": curve([(20, 0.70, 1), (40, 0.82, 2), (60, 0.83, 3)]),
            "Y": curve([(5, 0.55, 1), (10, 0.56, 2), (15, 0.56, 3)])},
    }
    result = over_seeds(seeds, grid_from=0.5)
    assert result["headline_target"] == pytest.approx(0.56)  # Y sustains 56% from t = 10 of 15 in both seeds
    assert result["grid"][-1] == pytest.approx(0.83)  # S and X sustain 83% in both seeds, X not 83.5%
    table = markdown(result)
    assert "| 56.0%* |" in table and "| 56.5% |" in table
    # 80%: seed 0, S at 20 s and X at 40 s; seed 1 (interpolated), S at 10 + 10/15 x 10 s, X at 20 + 10/12 x 20 s
    r0, r1 = 40 / 20, (20 + 20 * 10 / 12) / (10 + 10 * 10 / 15)
    assert f"| 80.0% | {math.sqrt(r0 * r1):.2f}x [{r0:.2f}, {r1:.2f}] | not reached (0/2) |" in table
    assert "| 60.0% |" in table and "not reached (1/2)" in table  # Y reaches 60% (sustained) in seed 0 only
    assert "| 83.5%" not in table
    # with chance at 56% no grid target above it is sustained by Y before its last quarter: no headline at all,
    # rather than a target that guessing reaches; the grid table starts above chance
    floored = over_seeds(seeds, grid_from=0.5, chance=0.56)
    assert floored["headline_target"] is None and floored["grid"][0] == pytest.approx(0.565)
    assert "Headline target: none" in markdown(floored) and "above chance, 56.0%" in markdown(floored)


def test_round_progress_is_silent_unless_its_stream_is_a_terminal():
    import io

    from legendfl.runtime.progress import RoundProgress

    quiet = io.StringIO()
    bar = RoundProgress("round 1", 3, stream=quiet)
    bar.advance(100)
    bar.close()
    assert quiet.getvalue() == ""  # StringIO is not a terminal
    shown = io.StringIO()
    bar = RoundProgress("round 1", 2, stream=shown, enabled=True)
    bar.advance(100)
    assert "1/2 devices" in shown.getvalue() and "tokens/s" in shown.getvalue()


def test_the_metrics_read_records_by_field_and_refuse_a_value_that_is_not_a_number():
    rec = curve([(10, 0.70, 100), (20, 0.80, 200)])
    points = round_points(rec)
    assert [(p.round, p.time_s, p.traffic_bytes, p.accuracy) for p in points] == [(1, 10, 100, 0.70), (2, 20, 200, 0.80)]
    assert round_points(points) == points and summarize(rec)["final_accuracy"] == 0.80
    real = [{**r, "clock": "real", "real_time_s": r.pop("virtual_time_s") + 1} for r in curve([(10, 0.7, 1)])]
    assert round_points(real)[0].time_s == 11 and "real_time_s" in summarize(real)
    rec[1]["accuracy"] = "0.8"
    with pytest.raises(ValueError, match=r"round 2: accuracy must be a number, got '0.8'"):
        summarize(rec)
    del rec[0]["mean_waiting_s"]
    with pytest.raises(ValueError, match="round 1: mean_waiting_s must be a number, got None"):
        crossing(rec, 0.75)


def test_the_accuracy_figure_draws_its_reference_levels_and_refuses_too_many(tmp_path):
    runs = {"a": curve([(10, 0.60, 1), (20, 0.80, 2)]), "b": curve([(15, 0.55, 1), (30, 0.85, 2)])}
    plain = plot_accuracy_vs_time(runs, tmp_path / "plain.png").read_bytes()
    levels = plot_accuracy_vs_time(runs, tmp_path / "levels.png", levels={"chance": 0.5, "base model": 0.49})
    assert levels.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and levels.read_bytes() != plain
    with pytest.raises(ValueError, match="levels: at most 3"):
        plot_accuracy_vs_time(runs, tmp_path / "x.png", levels={str(i): 0.1 * i for i in range(4)})
    assert not (tmp_path / "x.png").exists()


def test_a_speedup_figure_with_nothing_reached_says_so_without_a_warning(tmp_path):
    """The reference reaches 90% in no seed: no curve, no empty legend (matplotlib warns), a figure that says why."""
    seeds = {0: {"a": curve([(10, 0.60, 1), (20, 0.70, 2)]), "b": curve([(15, 0.65, 1), (30, 0.95, 2)])}}
    curves = speedup_curve(seeds, [0.9])
    assert all(iv.n == 0 for _, iv in curves["b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = plot_speedup_vs_target(curves, "a", tmp_path / "empty.png").read_bytes()
        drawn = plot_speedup_vs_target(speedup_curve(seeds, [0.6, 0.65]), "a", tmp_path / "drawn.png").read_bytes()
    assert empty[:8] == drawn[:8] == b"\x89PNG\r\n\x1a\n" and empty != drawn
