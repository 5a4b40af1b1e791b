"""MergeSFL (Liao et al., arXiv 2311.13348): split federated fine-tuning with feature merging and batch-size
regulation, brought to LoRA fine-tuning of a language model.

Each round (``core.split``): the server chooses devices and their batch sizes (``feature_merging.py``: eq. 7-13),
each chosen device trains the LoRA of the model's bottom (blocks below ``split_layer``) on its own batches while
the server trains the top's LoRA and the head on the merged features of all of them, for K iterations; then the
devices' bottom LoRA is averaged weighted by batch size (eq. 17) and the server keeps its top and its AdamW state.
What differs from the paper and why is said in ``feature_merging.py`` and in BENCHMARKS.md; further here:

- speeds (eq. 5-6): per device, moving averages of compute seconds per example (forward + backward) and of
  transfer seconds per example (its features up and their gradients down: the transfer seconds it reports less
  the model's share by bytes, :func:`activation_seconds`), from its reports; a device
  not yet heard from gets the median of the others (every device, in round 1, the same: all get D);
- batch sizes are capped by what a device holds (the sum of its label counts; the transcription's rule) and by the
  ingress budget, so the merged label distribution counts only examples that come;
- label counts: each device reports its label counts with its first result (devices send them once; the
  paper's devices do the same, a privacy cost: the server learns every device's label mix). A device not yet
  heard from is chosen before any other, so the controller knows every device after it first took part;
- learning rates: the paper scales SGD's rate by b_i / max b; with AdamW (the optimizer of every method here)
  a gradient's scale cancels, so every participant uses the round's learning rate; the server's gradient to
  device i is scaled by N / b_i (the authors' dispatch rule), so each device steps on its own examples' mean loss.
- decoders (generative tasks) split the same way, the server's top ending in the frozen LM head; devices report
  their examples' classes where the task has them (a prompted task's label, MMLU's answer letter; a task without
  classes counts all in one, so merging then only weighs examples and fairness).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ..core.aggregation import weighted_average
from ..core.lora_layout import LoraLayout
from ..core.options import StrategyOptions, option, validate
from ..core.seeding import derive_seed, rng
from ..core.split import OPTIMIZER, SERVER_ID, SplitPlan
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec, Strategy, Tensors, key_layer
from .feature_merging import merged_divergence, regulate_batches, select_devices
from .registry import register_preset, register_strategy



def activation_seconds(result: DeviceResult) -> float:
    """The seconds a device spent sending features and receiving their gradients: its transfer seconds less the
    model's share, split by bytes (the model's download and upload are per round, not per example)."""
    work, timing = result.work, result.timing

    def share(seconds: float, total: int, model: int) -> float:
        return seconds * (total - model) / total if total > 0 else 0.0

    return (share(timing.download_s, work.download_bytes, work.lora_download_bytes)
            + share(timing.upload_s, work.upload_bytes, work.lora_upload_bytes))


@dataclass(frozen=True)
class MergeSFLOptions(StrategyOptions):
    split_layer: int | None = option(None, "s: devices hold the embeddings and blocks 0..s-1, the server the rest "
                                     "(None: half of the blocks)", minimum=1, integer=True)
    max_batch_size: int = option(16, "D: the fastest device's examples per iteration (the run's default batch_size)",
                                 minimum=1, integer=True)
    regulation: bool = option(True, "batch-size regulation (eq. 7-9); off: every device gets D", choices=(True, False))
    merging: bool = option(True, "choose devices by feature merging (eq. 11-13); off: at random within the budget",
                           choices=(True, False))
    ingress_budget: int | None = option(None, "the server's ingress budget: examples it merges per iteration (their "
                                        "features, labels and lengths); None: no limit", minimum=1, integer=True)
    max_devices: int | None = option(None, "at most this many devices per round (None: no limit)", minimum=1, integer=True)
    kl_threshold: float = option(0.05, "a merged label distribution within this KL of the reference is IID enough: "
                                 "the set with the most examples per iteration among those wins", minimum=0.0)
    ema: float = option(0.8, "moving-average weight of the speed estimates (as LEGEND's rho)", minimum=0.0, maximum=1.0)

    def __post_init__(self) -> None:
        validate(self, "mergesfl.")

    def check_run(self, cfg: Any) -> None:
        for name in ("round_deadline", "round_deadline_median"):
            if getattr(cfg, name, None) is not None:
                raise ValueError(f"{name} must be unset for strategy 'mergesfl': its devices and server wait for each "
                                 f"other in every iteration, so no device can be dropped mid-round")

    def check_num_layers(self, num_layers: int) -> None:
        if self.split_layer is not None and not 1 <= self.split_layer <= num_layers - 1:
            raise ValueError(f"mergesfl.split_layer must be in [1, {num_layers - 1}] for a model of {num_layers} "
                             f"blocks, got {self.split_layer}")


@register_strategy("mergesfl", help="MergeSFL: split fine-tuning, merged features, regulated batch sizes (simulator only)")
class MergeSFL(Strategy):
    Options = MergeSFLOptions
    STATE = ("bottom", "top", "compute_s", "transfer_s", "label_counts", "chosen", "plan")
    decisions_use_time = True  # batch sizes follow the devices' reported speeds

    def __init__(self, options: MergeSFLOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.bottom: Tensors = {}
        self.top: Tensors = {}  # the server's top LoRA, head and AdamW state
        self.compute_s: dict[int, float] = {}  # seconds of compute per example (mu)
        self.transfer_s: dict[int, float] = {}  # seconds of transfer per example (beta)
        self.label_counts: dict[int, list[int]] = {}
        self.chosen: dict[int, int] = {}  # rounds each device took part in
        self.plan: dict[str, Any] = {}  # this round's choice, for the record

    @property
    def split(self) -> int:
        assert self.spec is not None
        return self.options.split_layer if self.options.split_layer is not None else self.spec.num_layers // 2

    def layout(self) -> LoraLayout:
        return LoraLayout.all_layers(self.lora_rank, self.spec.num_layers)

    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        super().initialize(spec, device_ids)
        self.options.check_num_layers(spec.num_layers)
        if spec.num_layers < 2:
            raise ValueError(f"strategy 'mergesfl' needs a model of at least 2 blocks, got {spec.num_layers}")
        init = spec.init_lora(self.layout(), derive_seed(self.seed, "init"))
        self.bottom = {k: v for k, v in init.items() if key_layer(k) < self.split}
        self.top = {**{k: v for k, v in init.items() if key_layer(k) >= self.split},
                    **{k: v.clone() for k, v in spec.head.items()}}

    # --- the controller -----------------------------------------------------------------------------------------
    def batch_sizes(self, devices: list[int]) -> dict[int, int]:
        largest = self.options.max_batch_size
        if not self.options.regulation:
            return self.capped({d: largest for d in devices})
        known = {d: self.compute_s[d] + self.transfer_s[d] for d in devices if d in self.compute_s}
        fill = statistics.median(known.values()) if known else 1.0
        sizes = regulate_batches({d: known.get(d, fill) for d in devices}, largest)
        return self.capped(sizes)

    def capped(self, sizes: dict[int, int]) -> dict[int, int]:
        """Batch sizes within the ingress budget and within what each device holds (the sum of the label counts it
        reported): a device holding fewer examples than its batch would send fewer, and the merged label
        distribution would be computed for examples that never come."""
        budget = self.options.ingress_budget
        out = {}
        for d, b in sizes.items():
            held = sum(self.label_counts.get(d, []))
            out[d] = min([b] + ([budget] if budget is not None else []) + ([held] if held > 0 else []))
        return out

    def choose(self, rnd: int, sizes: dict[int, int]) -> tuple[list[int], float | None]:
        """The round's devices within the budget and the device cap: by feature merging once every device has
        reported its label counts; until then those not yet heard from first, then the others, in a random order
        (without merging: in a random order)."""
        budget, most = self.options.ingress_budget, self.options.max_devices
        order = [int(d) for d in rng(self.seed, "mergesfl", rnd).permutation(sorted(sizes))]
        new = [d for d in order if d not in self.label_counts]
        known = all(self.label_counts.get(d) for d in sizes)  # every eligible device's label counts
        if not self.options.merging or not known:
            picked, used = [], 0
            for d in (new + [d for d in order if d not in new]) if self.options.merging else order:
                if (budget is None or used + sizes[d] <= budget) and (most is None or len(picked) < most):
                    picked.append(d)
                    used += sizes[d]
            if not picked:
                raise ValueError(f"mergesfl.ingress_budget ({budget} examples per iteration) fits no device")
            # without merging: the KL of the random set, for the record
            return sorted(picked), merged_divergence(sizes, self.label_counts, picked) if known else None
        chosen, kl = select_devices(sizes, self.label_counts, self.chosen, budget=budget, max_devices=most,
                                    kl_threshold=self.options.kl_threshold)
        return chosen, kl

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        if not device_ids:
            return {}
        sizes = self.batch_sizes(sorted(device_ids))
        chosen, kl = self.choose(rnd, sizes)
        lr = self.round_lr(rnd)
        L = self.spec.num_layers
        tasks = {d: DeviceTask(d, rnd, dict(self.bottom), SplitPlan(self.split, L, self.lora_rank, sizes[d]), "split-lora", lr)
                 for d in chosen}
        merged = sum(sizes[d] for d in chosen)
        tasks[SERVER_ID] = DeviceTask(SERVER_ID, rnd, dict(self.top),
                                      SplitPlan(self.split, L, self.lora_rank, merged, role="server"), "split-lora", lr)
        self.plan = {"selected": chosen, "batch_sizes": {str(d): sizes[d] for d in chosen}, "merged_batch": merged,
                     "merged_kl": None if kl is None else round(kl, 6)}
        return tasks

    # --- aggregation ---------------------------------------------------------------------------------------------
    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        server = next((r for r in results if r.device_id == SERVER_ID), None)
        devices = [r for r in results if r.device_id != SERVER_ID]
        if server is not None:
            self.top = dict(server.params)
        if devices:  # eq. 17: weighted by batch size (the examples each trained on: b_i x K, fewer if it holds fewer)
            self.bottom = weighted_average([(float(r.num_examples), r.params) for r in devices])
        rho = self.options.ema
        for r in devices:
            self.chosen[r.device_id] = self.chosen.get(r.device_id, 0) + 1
            self.label_counts.setdefault(r.device_id, [int(c) for c in r.metrics.get("label_counts", [])])
            if r.timing is not None and r.work is not None and r.num_examples > 0:
                for estimates, seconds in ((self.compute_s, r.timing.compute_s), (self.transfer_s, activation_seconds(r))):
                    observed = seconds / r.num_examples
                    old = estimates.get(r.device_id)
                    estimates[r.device_id] = observed if old is None else rho * old + (1 - rho) * observed
        out: dict[str, Any] = {**self.plan, "aggregated_devices": len(devices)}
        if server is not None:
            out.update({k: server.metrics[k] for k in ("iterations", "activation_upload_bytes", "activation_download_bytes",
                                                       "server_compute_s", "iteration_s") if k in server.metrics})
            out["server_loss"] = round(server.train_loss, 5)
        return out

    def evaluation_task(self) -> DeviceTask:
        params = {**self.bottom, **{k: v for k, v in self.top.items() if not k.startswith(OPTIMIZER)}}
        return DeviceTask(device_id=-1, round=0, params=params, config=self.layout())

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "split_layer": self.split if self.spec is not None else None,
                "rounds_per_device": {str(d): c for d, c in sorted(self.chosen.items())}}


register_preset("mergesfl-no-merging", "mergesfl", "MergeSFL choosing devices at random (ablation)", merging=False)
register_preset("mergesfl-no-regulation", "mergesfl", "MergeSFL with one batch size for every device (ablation)",
                regulation=False)
