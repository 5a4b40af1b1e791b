"""Property tests of LEGEND's configuration algorithm (Algorithm 1) over random fleets."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legendfl.strategies.capacity import CapacityEstimator, CapacityReport, DeviceEstimate, capacity_report
from legendfl.strategies.lcd import Budgets, configure_depths, rank_distribution

estimate = st.builds(DeviceEstimate, st.floats(0.001, 50.0), st.floats(0.0001, 5.0), st.floats(0.01, 100.0))
fleets = st.dictionaries(st.integers(0, 200), estimate, min_size=1, max_size=40)


@given(L=st.integers(1, 48), step=st.integers(0, 4), extra=st.integers(0, 400))
def test_rank_distribution_properties(L, step, extra):
    budget = L + step * L * (L - 1) // 2 + extra
    ranks = rank_distribution(L, budget, step)
    assert len(ranks) == L and all(isinstance(r, int) and r >= 1 for r in ranks)
    assert all(a <= b for a, b in zip(ranks, ranks[1:]))  # eq. 10: non-decreasing towards the output
    assert sum(ranks) <= budget  # eq. 11
    assert sum(ranks) > budget - L  # uses the budget (remainder spread)


def test_rank_distribution_paper_example_and_errors():
    assert rank_distribution(6, 48, 1) == [5, 6, 7, 9, 10, 11]  # [5..10] = 45, remainder 3 to the top
    assert rank_distribution(12, 96, 0) == [8] * 12
    assert rank_distribution(6, 21, 1) == [1, 2, 3, 4, 5, 6]  # the smallest budget for lambda = 1
    # unset step: 1 where it fits, else (30 layers at rank 8) an even rise from rank 1 that spends the budget
    assert rank_distribution(6, 48, None) == rank_distribution(6, 48, 1)
    deep = rank_distribution(30, 240, None)
    assert sum(deep) == 240 and deep[0] == 1 and deep == sorted(deep) and deep[-1] > 8
    with pytest.raises(ValueError, match="rank_budget must be >= 21"):
        rank_distribution(6, 20, 1)


@settings(max_examples=300, deadline=None)
@given(fleet=fleets, L=st.integers(1, 24), variant=st.sampled_from(["literal", "interpolated"]))
def test_depths_in_range_monotone_and_the_gap_spans_them(fleet, L, variant):
    ranks = rank_distribution(L, 8 * L, 0 if L > 12 else 1)
    d = configure_depths(fleet, ranks, variant=variant)
    assert all(1 <= k <= L for k in d.depths.values())
    speed = d.full_depth_times
    fastest = min(speed, key=speed.get)
    t_h, t_min, k = max(speed.values()), min(speed.values()), d.depth_gap
    if variant == "interpolated":
        assert d.depths[fastest] == L
    else:  # as printed: L - k^h + ceil(k^h (t^h - t_min) / t^h)
        assert d.depths[fastest] == (L if k == 0 else L - k + math.ceil(k * (t_h - t_min) / t_h - 1e-12))
    slowest = max(speed, key=speed.get)
    assert d.depths[slowest] == L - d.depth_gap and 0 <= d.depth_gap <= L - 1
    for a in fleet:
        for b in fleet:
            if speed[a] < speed[b]:
                assert d.depths[a] >= d.depths[b]  # faster never gets a smaller depth


@settings(max_examples=300, deadline=None)
@given(fleet=fleets, L=st.integers(2, 12), comp=st.integers(1, 120), comm=st.floats(100, 2e6),
       eps=st.one_of(st.none(), st.floats(0.0, 50.0)))
def test_budgets_never_violated(fleet, L, comp, comm, eps):
    ranks = rank_distribution(L, 8 * L, 1)
    budgets = Budgets(compute=comp, comm=comm, waiting=eps, bytes_per_rank=3072.0)
    d = configure_depths(fleet, ranks, budgets, variant="literal")
    for dev, k in d.depths.items():
        rank_sum = sum(ranks[L - k:])
        within = rank_sum <= comp and 3072.0 * rank_sum <= comm
        assert within or (k == 1 and dev in d.over_budget)
    if eps is not None and d.depth_gap < L - 1:
        assert d.mean_waiting <= eps + 1e-9
    speed = d.full_depth_times
    for a in fleet:
        for b in fleet:
            if speed[a] < speed[b]:
                assert d.depths[a] >= d.depths[b]


def test_depth_gap_follows_the_spread_by_hand():
    # t_i at full depth (L = 4, ranks [1,2,3,4], sum 10): fwd + 4 mu + 10 beta
    est = {0: DeviceEstimate(1.0, 0.0, 6.0), 1: DeviceEstimate(1.0, 0.0, 1.0), 2: DeviceEstimate(0.5, 0.0, 3.0)}
    # full times: 10, 5, 5 -> gap = ceil(4 * 5/10) = 2; as printed: 4 - 2 + ceil(2 (10 - t) / 10) -> 2, 3, 3
    d = configure_depths(est, [1, 2, 3, 4], variant="literal")
    assert d.depth_gap == 2 and d.depths == {0: 2, 1: 3, 2: 3}
    assert d.predicted_times[0] == pytest.approx(6 + 2 * 1.0)
    # the interpolated reading: 4 - ceil(2 (t - 5) / 5) -> 2, 4, 4
    assert configure_depths(est, [1, 2, 3, 4], variant="interpolated").depths == {0: 2, 1: 4, 2: 4}


@settings(max_examples=300, deadline=None)
@given(fleet=fleets, L=st.integers(1, 24), comp=st.one_of(st.none(), st.integers(1, 200)),
       comm=st.one_of(st.none(), st.floats(100, 2e6)), eps=st.one_of(st.none(), st.floats(0.0, 50.0)))
def test_fill_stays_within_the_round_and_never_lowers_line3(fleet, L, comp, comm, eps):
    ranks = rank_distribution(L, 8 * L, 0 if L > 12 else 1)
    budgets = Budgets(compute=comp, comm=comm, waiting=eps, bytes_per_rank=3072.0)
    literal = configure_depths(fleet, ranks, Budgets(compute=comp, comm=comm, bytes_per_rank=3072.0), variant="literal")
    d = configure_depths(fleet, ranks, budgets)
    assert d.variant == "fill" and d.line3_depths == literal.depths  # line 3 (and 5) as printed, before the fill
    t_h = max(fleet[dev].completion_time(k, sum(ranks[L - k:])) for dev, k in literal.depths.items())
    assert d.round_time == pytest.approx(t_h)
    for dev, k in d.depths.items():
        assert literal.depths[dev] <= k <= L  # never below line 3's depth
        assert d.predicted_times[dev] <= t_h * (1 + 1e-9)  # never past the round's predicted time
        rank_sum = sum(ranks[L - k:])
        if k > literal.depths[dev]:
            assert (comp is None or rank_sum <= comp) and (comm is None or 3072.0 * rank_sum <= comm)
        if k < L:  # filled as far as the round and the budgets allow
            nxt = sum(ranks[L - k - 1:])
            assert (fleet[dev].completion_time(k + 1, nxt) > t_h * (1 + 1e-12)
                    or (comp is not None and nxt > comp) or (comm is not None and 3072.0 * nxt > comm))
    assert d.mean_waiting <= literal.mean_waiting + 1e-9


def test_fill_by_hand_gives_idle_devices_more_layers():
    # L = 4, ranks [1,2,3,4]; device 0 slow (forward 6, mu 1), devices 1, 2 fast
    est = {0: DeviceEstimate(1.0, 0.0, 6.0), 1: DeviceEstimate(1.0, 0.0, 1.0), 2: DeviceEstimate(3.0, 0.0, 1.0)}
    # full times 10, 5, 13 -> gap ceil(4 * 8/13) = 3; line 3 as printed: 1 + ceil(3 (13 - t) / 13) -> 0: 2, 1: 3, 2: 1
    lit = configure_depths(est, [1, 2, 3, 4], variant="literal")
    assert lit.depths == {0: 2, 1: 3, 2: 1}
    assert configure_depths(est, [1, 2, 3, 4], variant="interpolated").depths == {0: 2, 1: 4, 2: 1}  # 4 - ceil(3 (t - 5) / 8)
    # predicted at line 3: 0: 6 + 2 = 8, 1: 1 + 3 = 4, 2: 1 + 3 = 4 -> t^h = 8; device 1 fills to 4 (5 <= 8),
    # device 2 to depth 2 (7 <= 8), not 3 (10)
    fill = configure_depths(est, [1, 2, 3, 4])
    assert fill.round_time == 8 and fill.depths == {0: 2, 1: 4, 2: 2}
    with pytest.raises(ValueError, match="lcd must be one of"):
        configure_depths(est, [1, 2, 3, 4], variant="greedy")


def test_completion_time_predicts_every_term_the_clock_charges_by_hand():
    """capacity.py: eq. 12 plus the download of the device's LoRA and the head's transfers, from what the
    device measured; a device at depth 2 (ranks 3 + 4 = 7) on a 1 MB/s link both ways."""
    from legendfl.core.strategy import DeviceResult
    from legendfl.core.work import DeviceTiming, DeviceWork
    from legendfl.fleet.cost_model import MEGABIT

    rank_bytes, head = 1000, 500  # bytes of one layer's LoRA at unit rank; of the head
    lora = 7 * rank_bytes
    work = DeviceWork(forward_flops=0, backward_flops=0, download_bytes=lora + head, upload_bytes=lora + head, trained_depth=2, rank_sum=7,
                      lora_upload_bytes=lora, lora_download_bytes=lora)
    mbps = 8.0  # 1 MB/s
    timing = DeviceTiming(download_s=(lora + head) / (mbps * MEGABIT), forward_s=3.0, backward_s=4.0,
                          upload_s=(lora + head) / (mbps * MEGABIT))
    report = capacity_report(DeviceResult(0, 1, {}, num_examples=1, work=work, timing=timing))
    assert report.backward_time_per_layer == pytest.approx(2.0)
    assert report.upload_time_per_rank == pytest.approx(rank_bytes / 1e6)
    assert report.download_time_per_rank == pytest.approx(rank_bytes / 1e6)
    assert report.fixed_transfer_time == pytest.approx(2 * head / 1e6)
    est = CapacityEstimator(0.8)
    e = est.update(0, report)
    # predicted at the same depth: exactly what the clock charged
    assert e.completion_time(2, 7) == pytest.approx(timing.total_s)
    # at depth 4 (ranks 1 + 2 + 3 + 4 = 10): forward 3, backward 4 x 2, transfers (10 x 1000 + 500) B each way
    assert e.completion_time(4, 10) == pytest.approx(3.0 + 8.0 + 2 * (10 * rank_bytes + head) / 1e6)


def test_capacity_moving_average():
    est = CapacityEstimator(ema=0.8)
    est.update(7, CapacityReport(1.0, 0.1, 10.0))
    e = est.update(7, CapacityReport(2.0, 0.2, 20.0))
    assert e.backward_time_per_layer == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)
    assert e.upload_time_per_rank == pytest.approx(0.12) and e.forward_time == pytest.approx(12.0)
    with pytest.raises(ValueError, match="ema"):
        CapacityEstimator(ema=1.5)
