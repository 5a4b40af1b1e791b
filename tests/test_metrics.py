"""Time to target (first touch, sustained and interpolated), bootstrap intervals, and tables over seeds."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from legendfl.metrics.comparison import over_seeds, seed_values, speedup_curve
from legendfl.metrics.stats import bootstrap_ci
from legendfl.metrics.summary import crossing, summarize


def curve(points, waiting=1.0):
    """Records from (time, accuracy, traffic) points, one evaluated round each."""
    return [{"round": i + 1, "virtual_time_s": t, "accuracy": a, "traffic_bytes": b, "mean_waiting_s": waiting,
             "round_time_s": 1.0} for i, (t, a, b) in enumerate(points)]


def test_sustained_crossing_interpolates_within_the_round():
    rec = curve([(10, 0.70, 100), (20, 0.80, 200), (30, 0.86, 300), (40, 0.90, 400)])
    # 0.83 lies between 0.80 (t=20) and 0.86 (t=30): halfway
    assert crossing(rec, 0.83) == pytest.approx(25.0)
    assert crossing(rec, 0.83, "traffic_bytes") == pytest.approx(250.0)
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
def test_ci_of_a_constant_series_has_zero_width(value, n):
    iv = bootstrap_ci([value] * n)
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


def test_tables_over_seeds_by_hand():
    # seed 0: S reaches 0.8 at 20 s, X at 40 s (speed-up 2); seed 1: 30 s vs 90 s (3)
    seeds = {
        0: {"S": curve([(10, 0.70, 100), (20, 0.80, 200), (30, 0.85, 300)], 1.0),
            "X": curve([(20, 0.70, 300), (40, 0.80, 500), (60, 0.80, 800)], 4.0)},
        1: {"S": curve([(15, 0.60, 100), (30, 0.80, 200), (45, 0.82, 250)], 2.0),
            "X": curve([(45, 0.70, 400), (90, 0.80, 1000), (135, 0.81, 2000)], 4.0)},
    }
    target0, per0 = seed_values(seeds[0])
    assert target0 == 0.80  # the lowest final accuracy in that seed
    assert per0["X"]["speedup_sustained"] == pytest.approx(2.0) and per0["S"]["speedup_sustained"] == pytest.approx(1.0)
    assert per0["X"]["traffic_reduction"] == pytest.approx(1 - 200 / 500)
    assert per0["X"]["waiting_reduction"] == pytest.approx(1 - 1.0 / 4.0)
    result = over_seeds(seeds)
    assert result["targets"] == {0: 0.80, 1: 0.81}
    # seed 1, target 0.81: S crosses between (30, 0.80) and (45, 0.82) -> 37.5; X at 135 -> 3.6x
    assert result["per_seed"][1]["X"]["time_sustained_s"] == pytest.approx(135.0)
    assert result["per_seed"][1]["S"]["time_sustained_s"] == pytest.approx(37.5)
    iv = result["intervals"]["X"]["speedup_sustained"]
    assert iv.mean == pytest.approx((2.0 + 135 / 37.5) / 2) and iv.n == 2
    assert result["intervals"]["S"]["speedup_sustained"].half_width == 0
    curves = speedup_curve(seeds, [0.70, 0.80, 0.90])
    assert [iv.n for _, iv in curves["X"]] == [2, 2, 0]  # nobody sustains 0.90
    assert curves["X"][1][1].mean == pytest.approx((40 / 20 + 90 / 30) / 2)


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
