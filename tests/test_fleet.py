import pytest

from legendfl.core.lora_layout import LoraLayout
from legendfl.core.strategy import DeviceResult
from legendfl.core.work import DeviceTiming, DeviceWork
from legendfl.fleet.cost_model import device_timing, measured_timing
from legendfl.strategies.capacity import capacity_report
from legendfl.fleet.devices import load_fleet
from legendfl.fleet.inspect import describe_fleet
from legendfl.fleet.virtual_clock import VirtualClock
from legendfl.core.flops import batch_flops


def test_depth_k_computes_faster_than_depth_L_by_the_flop_ratio(backbone):
    fleet = load_fleet("jetson", 10, seed=0)
    state = fleet.state(0, 1)
    spec = backbone.spec

    def timing(depth):
        f, b = batch_flops(spec, LoraLayout.top(depth, [8] * 6), 16, 30)
        return device_timing(state, DeviceWork(forward_flops=f * 25, backward_flops=b * 25, download_bytes=0,
                                               upload_bytes=0, trained_depth=depth), "flops"), (f + b) * 25

    t2, flops2 = timing(2)
    t6, flops6 = timing(6)
    assert t6.compute_s / t2.compute_s == pytest.approx(flops6 / flops2, rel=1e-9)
    assert t2.compute_s < t6.compute_s


def _roberta_base_spec():
    from legendfl.core.strategy import ModelSpec

    h, i = 768, 3072
    linear = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
              "attention.output.dense": (h, h), "intermediate.dense": (h, i), "output.dense": (i, h)}
    return ModelSpec(12, linear, {}, h, 0)


def _batch_work(spec, layout, batches, seqs, width, **kw):
    from legendfl.core.flops import batch_work

    w = batch_work(spec, layout, seqs, width, **kw)
    depth = layout.depth if layout is not None else 0
    return DeviceWork(forward_flops=w.forward * batches, backward_flops=w.backward * batches, download_bytes=0,
                      upload_bytes=0, trained_depth=depth, rank_sum=0, lora_upload_bytes=0, steps=batches,
                      layer_forward_flops=w.layer_forward * batches, trainable_forward_flops=w.trainable_forward * batches,
                      trained_layers=len(layout.ranks) if layout is not None else 0, num_layers=spec.num_layers,
                      full=kw.get("full", False))


def test_profile_model_reproduces_the_papers_fig4a_line():
    """The jetson profile's reference device, RoBERTa-base, batch 4 x 64, rank 8: t(k) = 16.8 + 5k ms (Fig. 4a)."""
    from legendfl.fleet.devices import DeviceRoundState

    fleet = load_fleet("jetson", 80, seed=0)
    agx = next(d for d in fleet.devices if d.kind == "agx-xavier")
    assert agx.modes_gflops[0] == agx.profile.reference_gflops == 2000.0
    state = DeviceRoundState(agx.device_id, 1, 0, agx.modes_gflops[0], 10.0, 10.0, agx.profile)
    spec = _roberta_base_spec()
    ms = {k: 1000 * device_timing(state, _batch_work(spec, LoraLayout.top(k, [8] * 12), 1, 4, 64)).compute_s for k in range(1, 13)}
    assert ms[1] == pytest.approx(21.8, rel=0.05) and ms[12] == pytest.approx(76.8, rel=0.05)
    assert (ms[12] - ms[1]) / 11 == pytest.approx(5.0, rel=0.05)
    assert ms[12] / ms[1] == pytest.approx(3.52, rel=0.05)  # "+252%"
    # the FLOP model on the same work: backward priced like forward, depth 12 costs under 2x depth 1
    flops = {k: device_timing(state, _batch_work(spec, LoraLayout.top(k, [8] * 12), 1, 4, 64), "flops").compute_s for k in (1, 12)}
    assert flops[12] / flops[1] < 2.0
    # a mode 100x slower takes 100x longer
    slow = DeviceRoundState(agx.device_id, 1, 0, 20.0, 10.0, 10.0, agx.profile)
    assert device_timing(slow, _batch_work(spec, LoraLayout.top(1, [8] * 12), 1, 4, 64)).compute_s == pytest.approx(ms[1] / 10)
    # Fig. 3b's layouts (4 LoRA layers each): a frozen layer the backward traverses costs F = 2.576 ms, the
    # least-squares fit to the figure's S / D = 1.6 and M / D = 1.2 (jetson.toml); by hand, 36.8 ms for D,
    # 36.8 + 8F for S (layers 0-3 trained, 4-11 traversed), 36.8 + 4F for M
    layers = {name: 1000 * device_timing(state, _batch_work(spec, LoraLayout.uniform(idx, 8, 12), 1, 4, 64)).compute_s
              for name, idx in (("A", range(12)), ("S", range(4)), ("M", range(4, 8)), ("D", range(8, 12)))}
    F = 36.8 * (8 * 0.6 + 4 * 0.2) / (8 ** 2 + 4 ** 2)
    assert F == pytest.approx(2.576) and agx.profile.backward_ms_per_frozen_layer == pytest.approx(F)
    # (the LoRA pairs' own forward and backward add about 1%: tolerances of 2%)
    assert layers["D"] == pytest.approx(36.8, rel=0.02) and layers["A"] / layers["D"] == pytest.approx(2.09, rel=0.02)
    assert layers["S"] - layers["D"] == pytest.approx(8 * F, rel=1e-6) and layers["M"] - layers["D"] == pytest.approx(4 * F, rel=1e-6)
    assert layers["S"] / layers["D"] == pytest.approx(1.56, abs=0.02) and layers["M"] / layers["D"] == pytest.approx(1.28, abs=0.02)
    # full fine-tuning: the trained-layer backward plus the weight gradients (one more forward) on every layer
    full = 1000 * device_timing(state, _batch_work(spec, None, 1, 4, 64, full=True)).compute_s
    assert full == pytest.approx(12 * 1.4 + 12 * (5.0 + 1.4), rel=0.01)


def test_profile_scales_by_layer_flops_and_falls_back_to_flops_without_one(backbone):
    from legendfl.fleet.cost_model import timed_by

    fleet = load_fleet("jetson", 10, seed=0)
    state = fleet.state(0, 1)
    def work(seqs):
        return _batch_work(backbone.spec, LoraLayout.top(3, [8] * 6), 25, seqs, 32)

    assert device_timing(state, work(32)).compute_s == pytest.approx(2 * device_timing(state, work(16)).compute_s, rel=1e-9)
    phones = load_fleet("phones", 4, seed=0)
    assert timed_by(phones.state(0, 1), "profile") == "flops" and timed_by(state, "profile") == "profile"
    assert timed_by(state, "flops") == "flops"
    with pytest.raises(ValueError, match="cost_model must be one of"):
        timed_by(state, "wallclock")


def test_bad_profile_tables_name_the_field(tmp_path):
    base = (tmp_path / "f.toml")
    text = ('name = "x"\ndescription = "x"\n[profile]\nreference_hidden = 8\nreference_intermediate = 8\n'
            'reference_batch = 1\nreference_seq_len = 4\nforward_ms_per_layer = {fwd}\nbackward_ms_per_trained_layer = 2\n'
            'reference_gflops = 10\n{extra}\n[[device_types]]\nname = "a"\ncount = 1\nmodes = [10.0]\n'
            '[network]\ngroups = [{{ distance_m = 2, uplink_mbps = 5.0, downlink_mbps = 5.0 }}]\n')
    base.write_text(text.format(fwd=1, extra=""))
    assert load_fleet(str(base), 2).devices[0].profile.forward_ms_per_layer == 1.0
    for fwd, extra, message in ((-1, "", "profile.forward_ms_per_layer must be"), (0, "", "profile.forward_ms_per_layer must be > 0"),
                                (1, "speed = 3", "profile: unknown keys ['speed']"),
                                ('"fast"', "", "forward_ms_per_layer must be a finite number")):
        base.write_text(text.format(fwd=fwd, extra=extra))
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_fleet(str(base), 2)


def test_upload_time_is_proportional_to_rank_sum(backbone):
    fleet = load_fleet("jetson", 10, seed=0)
    state = fleet.state(3, 5)
    per_rank = 4 * sum(i + o for i, o in backbone.spec.linear_modules.values())
    times = []
    for ranks in ([4] * 6, [8] * 6, [5, 6, 7, 8, 9, 10]):
        layout = LoraLayout.top(6, ranks)
        nbytes = per_rank * layout.rank_sum
        assert nbytes == 4 * backbone.spec.lora_param_count(layout)
        work = DeviceWork(forward_flops=0, backward_flops=0, download_bytes=0, upload_bytes=nbytes, trained_depth=6,
                          rank_sum=layout.rank_sum, lora_upload_bytes=nbytes)
        t = device_timing(state, work)
        times.append(t.upload_s / layout.rank_sum)
        # LEGEND's beta-hat, derived from the generic measurements a device reports
        rep = capacity_report(DeviceResult(3, 5, {}, 1, work=work, timing=measured_timing(state, t)))
        assert rep.upload_time_per_rank == pytest.approx(times[0])
        noisy = capacity_report(DeviceResult(3, 5, {}, 1, work=work, timing=measured_timing(state, t, noise=0.2, seed=1)))
        assert noisy.upload_time_per_rank != pytest.approx(times[0]) and noisy.upload_time_per_rank > 0
    assert times[0] == pytest.approx(times[1]) == pytest.approx(times[2])


def test_modes_switch_every_20_rounds_and_bandwidth_every_round():
    fleet = load_fleet("jetson", 40, seed=1)
    def modes(r):
        return [fleet.state(d, r).mode for d in range(40)]

    assert all(modes(r) == modes(1) for r in range(2, 21))
    assert modes(21) != modes(20) and all(modes(r) == modes(21) for r in range(22, 41))
    assert fleet.state(0, 1).uplink_mbps != fleet.state(0, 2).uplink_mbps
    for r in (1, 7):
        for d in range(40):
            s = fleet.state(d, r)
            assert 1.0 <= s.uplink_mbps <= 30.0 and 1.0 <= s.downlink_mbps <= 30.0


def test_same_seed_same_trace_and_mix_kept_when_scaled():
    a, b, c = load_fleet("jetson", 20, seed=5), load_fleet("jetson", 20, seed=5), load_fleet("jetson", 20, seed=6)
    def trace(f):
        return [(f.state(d, r).mode, f.state(d, r).uplink_mbps) for d in range(20) for r in (1, 30)]

    assert trace(a) == trace(b) != trace(c)
    kinds = [d.kind for d in a.devices]
    assert (kinds.count("tx2"), kinds.count("xavier-nx"), kinds.count("agx-xavier")) == (8, 10, 2)
    assert [d.kind for d in load_fleet("jetson", 10, seed=0).devices].count("agx-xavier") == 1


def test_virtual_clock_counts_sent_bytes_and_waiting():
    clock = VirtualClock()
    e = clock.advance(1, {0: DeviceTiming(1, 2, 3, 4).total_s, 1: DeviceTiming(0.5, 1, 1, 0.5).total_s},
                      {0: 100, 1: 40}, {0: 70, 1: 20})
    assert e.round_time_s == 10 and e.waiting_s == {0: 0, 1: 7} and e.mean_waiting_s == 3.5
    assert clock.downlink_bytes == 140 and clock.uplink_bytes == 90 and clock.now_s == 10
    clock.advance(2, {0: 1.0}, {0: 1}, {0: 2})
    assert clock.now_s == 11 and clock.traffic_bytes == 233
    assert clock.record_fields(e)["virtual_time_s"] == 11
    # a real clock: the round lasts as long as the server waited; its time field says so
    real = VirtualClock("real")
    e = real.advance(1, {0: 2.0}, {0: 5, 1: 5}, {0: 3}, round_time_s=6.0)
    assert e.waiting_s == {0: 4.0} and real.record_fields(e)["real_time_s"] == 6.0 and real.traffic_bytes == 13
    with pytest.raises(ValueError, match="clock kind must be one of"):
        VirtualClock("wall")


def test_fleet_inspection_shows_the_paper_ratio():
    text = describe_fleet("jetson", None, 0, rounds=5)
    assert "devices: 80" in text and "ratio 100.0x" in text and "tx2" in text
    phones = load_fleet("phones", 12, seed=0)
    assert len(phones) == 12 and len({d.kind for d in phones.devices}) > 3


def test_adapter_backward_prices_what_backpropagation_traverses_by_hand():
    """A bottleneck adapter sits at its block's output: the gradient its parameters need never enters that
    block's frozen weights. Adapters in the top 3 of 12 blocks: the backward runs through 2 blocks in full
    (and through all 3 adapters); LoRA in the same 3 blocks runs through all 3 (core/flops.py)."""
    from legendfl.core.flops import batch_work
    from legendfl.strategies.fedadapter import AdapterLayout
    from legendfl.core.strategy import DeviceTask
    from legendfl.fleet.devices import DeviceRoundState
    from legendfl.methods.adapter import BottleneckMethod

    spec = _roberta_base_spec()
    task = DeviceTask(0, 1, {}, AdapterLayout(3, 16), "adapter")
    assert BottleneckMethod().shape(task, None, 12) == (2, 2, 0)
    adapter = 1e6  # one adapter's forward FLOPs on the batch
    w = batch_work(spec, None, 4, 64, extra_forward_per_layer={layer: adapter for layer in (9, 10, 11)})
    assert w.backward == pytest.approx(2 * w.layer_forward + 2 * 3 * adapter)  # (spec has no head)
    lora = batch_work(spec, LoraLayout.uniform([9, 10, 11], 8, 12), 4, 64)
    assert lora.backward == pytest.approx(3 * lora.layer_forward + 2 * lora.trainable_forward)
    # the profile model (jetson reference device, RoBERTa-base, 4 x 64): 16.8 ms forward + 2 trained layers x 5 ms,
    # plus the adapters' own forward and backward (priced as trainable modules)
    agx = next(d for d in load_fleet("jetson", 80, seed=0).devices if d.kind == "agx-xavier")
    state = DeviceRoundState(agx.device_id, 1, 0, agx.modes_gflops[0], 10.0, 10.0, agx.profile)
    work = DeviceWork(forward_flops=w.forward, backward_flops=w.backward, download_bytes=0, upload_bytes=0,
                      trained_depth=2, rank_sum=0, lora_upload_bytes=0, steps=1, layer_forward_flops=w.layer_forward,
                      trainable_forward_flops=w.trainable_forward, trained_layers=2, num_layers=12)
    per_flop = 1.4 / w.layer_forward  # ms per FLOP of a layer's forward
    expected = 16.8 + per_flop * 3 * adapter + 2 * 5.0 + (5.0 / 1.4) * per_flop * 3 * adapter
    assert 1000 * device_timing(state, work).compute_s == pytest.approx(expected, rel=1e-6)
