import pytest

from legendfl.core.lora_layout import LoraLayout
from legendfl.fleet.cost_model import DeviceWork, capacity_report, device_timing
from legendfl.fleet.devices import load_fleet
from legendfl.fleet.inspect import describe_fleet
from legendfl.fleet.virtual_clock import VirtualClock
from legendfl.models.flops import batch_flops


def test_depth_k_computes_faster_than_depth_L_by_the_flop_ratio(backbone):
    fleet = load_fleet("jetson", 10, seed=0)
    state = fleet.state(0, 1)
    spec = backbone.spec

    def timing(depth):
        f, b = batch_flops(spec, LoraLayout.top(depth, [8] * 6), 16, 30)
        return device_timing(state, DeviceWork(f * 25, b * 25, 0, 0, depth)), (f + b) * 25

    t2, flops2 = timing(2)
    t6, flops6 = timing(6)
    assert t6.compute_s / t2.compute_s == pytest.approx(flops6 / flops2, rel=1e-9)
    assert t2.compute_s < t6.compute_s


def test_upload_time_is_proportional_to_rank_sum(backbone):
    fleet = load_fleet("jetson", 10, seed=0)
    state = fleet.state(3, 5)
    per_rank = 4 * sum(i + o for i, o in backbone.spec.linear_modules.values())
    times = []
    for ranks in ([4] * 6, [8] * 6, [5, 6, 7, 8, 9, 10]):
        layout = LoraLayout.top(6, ranks)
        nbytes = per_rank * layout.rank_sum
        assert nbytes == 4 * backbone.spec.lora_param_count(layout)
        t = device_timing(state, DeviceWork(0, 0, 0, nbytes, 6, layout.rank_sum, nbytes))
        times.append(t.upload_s / layout.rank_sum)
        rep = capacity_report(state, DeviceWork(0, 0, 0, nbytes, 6, layout.rank_sum, nbytes), t)
        assert rep.upload_time_per_rank == pytest.approx(times[0])
    assert times[0] == pytest.approx(times[1]) == pytest.approx(times[2])


def test_modes_switch_every_20_rounds_and_bandwidth_every_round():
    fleet = load_fleet("jetson", 40, seed=1)
    modes = lambda r: [fleet.state(d, r).mode for d in range(40)]
    assert all(modes(r) == modes(1) for r in range(2, 21))
    assert modes(21) != modes(20) and all(modes(r) == modes(21) for r in range(22, 41))
    assert fleet.state(0, 1).uplink_mbps != fleet.state(0, 2).uplink_mbps
    for r in (1, 7):
        for d in range(40):
            s = fleet.state(d, r)
            assert 1.0 <= s.uplink_mbps <= 30.0 and 1.0 <= s.downlink_mbps <= 30.0


def test_same_seed_same_trace_and_mix_kept_when_scaled():
    a, b, c = load_fleet("jetson", 20, seed=5), load_fleet("jetson", 20, seed=5), load_fleet("jetson", 20, seed=6)
    trace = lambda f: [(f.state(d, r).mode, f.state(d, r).uplink_mbps) for d in range(20) for r in (1, 30)]
    assert trace(a) == trace(b) != trace(c)
    kinds = [d.kind for d in a.devices]
    assert (kinds.count("tx2"), kinds.count("xavier-nx"), kinds.count("agx-xavier")) == (8, 10, 2)
    assert [d.kind for d in load_fleet("jetson", 10, seed=0).devices].count("agx-xavier") == 1


def test_virtual_clock_counts_sent_bytes_and_waiting():
    from legendfl.fleet.cost_model import DeviceTiming

    clock = VirtualClock()
    e = clock.advance(1, {0: DeviceTiming(1, 2, 3, 4), 1: DeviceTiming(0.5, 1, 1, 0.5)}, {0: 100, 1: 40}, {0: 70, 1: 20})
    assert e.round_time_s == 10 and e.waiting_s == {0: 0, 1: 7} and e.mean_waiting_s == 3.5
    assert clock.downlink_bytes == 140 and clock.uplink_bytes == 90 and clock.now_s == 10
    clock.advance(2, {0: DeviceTiming(0, 1, 0, 0)}, {0: 1}, {0: 2})
    assert clock.now_s == 11 and clock.traffic_bytes == 233


def test_fleet_inspection_shows_the_paper_ratio():
    text = describe_fleet("jetson", None, 0, rounds=5)
    assert "devices: 80" in text and "ratio 100.0x" in text and "tx2" in text
    phones = load_fleet("phones", 12, seed=0)
    assert len(phones) == 12 and len({d.kind for d in phones.devices}) > 3
