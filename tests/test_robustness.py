"""A server that one bad device cannot break, and strategies whose state a checkpoint cannot miss."""
import copy

import pytest
import torch
from conftest import TINY_BERT

from legendfl.config import RunConfig
from legendfl.core.strategy import DeviceResult
from legendfl.core.work import DeviceTiming, DeviceWork
from legendfl.fleet.devices import load_fleet
from legendfl.metrics.records import RecordWriter
from legendfl.runtime.context import RunContext
from legendfl.runtime.loop import run_rounds
from legendfl.runtime.simulator import SimulatorTransport
from legendfl.strategies import get_entry, registered_bases

SMALL = {"model": TINY_BERT, "num_devices": 3, "rounds": 2, "max_local_steps": 2, "max_examples_per_device": 32, "max_dev_examples": 32,
         "max_length": 32, "validation_examples": 30}


class Poisoned(SimulatorTransport):
    """The simulator, but device 1's upload is corrupted (or, with ``poison=None``, device 1 never answers)."""

    def __init__(self, ctx, fleet, poison):
        super().__init__(ctx, fleet)
        self.poison = poison

    def run_round(self, rnd, tasks):
        outcome = super().run_round(rnd, tasks)
        for r in outcome.results:
            if r.device_id == 1 and self.poison is not None:
                self.poison(r)
        if self.poison is None:
            outcome.results = [r for r in outcome.results if r.device_id != 1]
            outcome.missing[1] = "did not answer"
        return outcome


def _nan(r):
    key = next(k for k in r.params if "lora_B" in k or "adapter_up" in k)
    r.params[key][0, 0] = float("nan")


def _shape(r):
    key = next(k for k in r.params if "lora_A" in k or "adapter_down" in k)
    r.params[key] = r.params[key][:-1]


def _scaled(r):
    r.params = {k: v * 1e6 for k, v in r.params.items()}


def _inflated(r):  # claims more examples than its partition can give in a round, to weigh more in the average
    r.num_examples = 10 ** 6


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    cache = {}

    def get(strategy, max_update_norm=1e3):
        if (strategy, max_update_norm) not in cache:
            cfg = RunConfig.from_sources(SMALL, {"strategy": strategy, "max_update_norm": max_update_norm,
                                                 "out_dir": str(tmp_path_factory.mktemp(strategy))})
            cache[strategy, max_update_norm] = (cfg, RunContext.for_simulation(cfg))
        return cache[strategy, max_update_norm]

    return get


def _run(cfg, ctx, poison, out):
    strategy = cfg.build_strategy()
    fleet = load_fleet(cfg.fleet, cfg.num_devices, cfg.train.seed)
    strategy.initialize(ctx.backbone.spec, list(range(len(fleet))))
    records = run_rounds(strategy, Poisoned(ctx, fleet, poison), ctx, RecordWriter(out), checkpoint=False)
    return strategy, records


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["legend", "hetlora", "flexlora", "fedexlora", "flora"])
def test_a_poisoned_update_is_rejected_and_the_global_model_equals_the_run_without_that_device(tmp_path, contexts, strategy):
    cfg, ctx = contexts(strategy)
    absent, _ = _run(cfg, ctx, None, tmp_path / "absent")
    for name, poison, reason in [("nan", _nan, "NaN or Inf"), ("shape", _shape, "shape"), ("scaled", _scaled, "exceeds max_update_norm")]:
        got, records = _run(cfg, ctx, poison, tmp_path / name)
        for rec in records:
            assert [r["device"] for r in rec["rejected"]] == [1] and reason in rec["rejected"][0]["reason"]
            assert "1" in rec["devices"]  # its work and traffic are still recorded
        assert got.global_params.keys() == absent.global_params.keys()
        for key, value in absent.global_params.items():
            assert torch.equal(got.global_params[key], value), (name, key)
        assert all(torch.isfinite(v).all() for v in got.global_params.values())


@pytest.mark.parametrize("strategy", ["legend", "fedadapter"])
def test_by_default_an_update_beyond_adamws_reach_or_claiming_more_examples_than_held_is_rejected(tmp_path, contexts, strategy):
    cfg, ctx = contexts(strategy, None)  # the default: no max_update_norm, AdamW's bound
    absent, honest_records = _run(cfg, ctx, None, tmp_path / "absent")
    for rec in honest_records:  # honest updates pass, and each shows its change and the bound it was held to
        assert rec["rejected"] == []
        for entry in rec["devices"].values():
            assert 0 < entry["update_norm"] < entry["update_norm_bound"]
    for name, poison, reason in [("scaled", _scaled, "AdamW steps"), ("examples", _inflated, "num_examples 1000000 exceeds")]:
        got, records = _run(cfg, ctx, poison, tmp_path / name)
        for rec in records:
            assert [r["device"] for r in rec["rejected"]] == [1] and reason in rec["rejected"][0]["reason"], rec["rejected"]
        assert _same(got.evaluation_task().params, absent.evaluation_task().params), name  # the global model


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and hasattr(b, "__dict__") and type(a) is type(b):
        return _same(vars(a), vars(b))
    return a == b


def _fake_results(tasks, rnd):
    out = []
    for d, t in tasks.items():
        params = {k: v + 0.01 * (d + 1) for k, v in t.params.items()}
        work = DeviceWork(forward_flops=1.0, backward_flops=1.0, download_bytes=10, upload_bytes=10,
                          trained_depth=max(1, t.config.depth if t.config else 1), rank_sum=4,
                          lora_upload_bytes=8)
        out.append(DeviceResult(d, rnd, params, num_examples=5 + d, work=work,
                                timing=DeviceTiming(0.1, 1.0 + d, 2.0 * (d + 1), 0.3 * (d + 1)),
                                metrics={"tail_norm": 0.5, "tail_norm_start": 1.0, "first_loss": 1.0,
                                         "last_loss": 0.9 - 0.1 * d}))
    return out


@pytest.mark.parametrize("name", sorted(registered_bases()))
def test_every_strategy_declares_all_the_state_a_round_changes(backbone, name):
    """A checkpoint saves ``STATE``; a new strategy that forgets an attribute a round changes fails here, and
    a strategy restored from its state_dict configures the next round exactly like the original."""
    strategy = get_entry(name).cls(seed=0, rounds=6)
    devices = [0, 1, 2, 3, 4, 5]
    strategy.initialize(backbone.spec, devices)
    initial = copy.deepcopy(vars(strategy))
    for rnd in (1, 2, 3):
        tasks = strategy.configure_round(rnd, devices)
        strategy.aggregate_round(rnd, _fake_results(tasks, rnd))
        candidates = strategy.candidate_evaluations(rnd)
        if candidates:
            strategy.receive_evaluations(rnd, {n: {"accuracy": 0.5 + 0.01 * i} for i, n in enumerate(candidates)})
    changed = {k for k, v in vars(strategy).items() if k not in initial or not _same(initial[k], v)}
    assert changed <= set(strategy.state_attributes()), f"{name}: not in STATE: {changed - set(strategy.state_attributes())}"
    restored = get_entry(name).cls(seed=0, rounds=6)
    restored.initialize(backbone.spec, devices)
    restored.load_state_dict(copy.deepcopy(strategy.state_dict()))
    a, b = strategy.configure_round(4, devices), restored.configure_round(4, devices)
    assert a.keys() == b.keys()
    for d in a:
        assert _same(a[d].params, b[d].params) and a[d].config == b[d].config


def test_adamws_step_bound_is_reached_by_the_worst_gradients_and_never_passed_by_others():
    """The bound of ``core.validation`` against torch's AdamW itself: gradients growing by b2/b1 per step (the
    equality case of its Cauchy-Schwarz argument) reach it at every step; random histories stay below."""
    from legendfl.core.validation import adamw_change_bound, adamw_step_bound

    assert adamw_step_bound(1) == pytest.approx(1.0)
    lr, steps = 1e-3, 60

    def largest_steps(grads):
        w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.AdamW([w], lr=lr, betas=(0.9, 0.999), eps=1e-30, weight_decay=0.0)
        moves = []
        for g in grads:
            before = w.detach().clone()
            w.grad = torch.tensor([g], dtype=torch.float64)
            opt.step()
            moves.append(abs(float(w.detach() - before)) / lr)
        return moves

    for t in (1, 2, 10, 60):  # the worst history for step t: g_i proportional to (b1 / b2) ** (t - i)
        worst = [(0.9 / 0.999) ** (t - i) for i in range(1, t + 1)]
        assert largest_steps(worst)[-1] == pytest.approx(adamw_step_bound(t), rel=1e-9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        grads = (torch.randn(steps, generator=gen, dtype=torch.float64) * torch.rand(steps, generator=gen, dtype=torch.float64)
                 ** 4 * 10).tolist()
        assert all(m <= adamw_step_bound(t) * (1 + 1e-9) for t, m in enumerate(largest_steps(grads), start=1))
    # with weight decay, over many weights: the L2 change of a real AdamW run stays under the bound
    w0 = torch.randn(500, generator=gen)
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.5)
    for t in range(1, 31):
        w.grad = torch.randn(500, generator=gen) * t
        opt.step()
    change = float((w.detach() - w0).norm())
    assert 0 < change < adamw_change_bound(500, float(w0.norm()), 1e-2, 30, 0.5)
