"""The run configuration: one dataclass, help text per field, validated in ``__post_init__``.

Values come from defaults, then a TOML/YAML config file, then command-line flags (highest priority).
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRATEGIES = ("legend", "legend-no-depth", "legend-no-rank", "fedlora", "hetlora", "fedadapter", "full")


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # --- task and data
    task: str = _f("sst2", "built-in task (sst2, qnli, qqp, mnli), a hub dataset like glue/sst2, or 'file' with --data-file")
    data_file: str | None = _f(None, "your own training file (.csv/.tsv/.json/.jsonl[.gz])")
    dev_file: str | None = _f(None, "your own dev file; without it 10% of --data-file is held out")
    text_columns: list[str] = _f(["text"], "one or two text columns of --data-file")
    label_column: str = _f("label", "label column of --data-file (string or integer labels, any number of classes)")
    max_dev_examples: int | None = _f(None, "evaluate on the first N dev examples only (None: the whole dev split)")
    validation_examples: int = _f(500, "training examples the server holds out (no device trains on them) to choose "
                                  "between candidate models, e.g. FedAdapter's trial groups; never the reported dev split")
    max_length: int = _f(128, "maximum tokens per example (the paper: 512)")
    # --- model
    model: str = _f("minilm", "packaged alias (minilm), a local Hugging Face directory, or a hub id (roberta-base)")
    # --- federation
    strategy: str = _f("legend", "federated algorithm", STRATEGIES)
    num_devices: int = _f(10, "devices in the fleet (the fleet's mix is kept when scaled)")
    partition: str = _f("dirichlet", "how data is split over devices", ("dirichlet", "iid"))
    dirichlet_alpha: float = _f(10.0, "Dirichlet alpha of the label skew (the paper: 10)")
    max_examples_per_device: int | None = _f(None, "keep at most this many examples per device (None: all)")
    rounds: int = _f(10, "federated rounds")
    eval_every: int = _f(1, "evaluate the global model every N rounds (and after the last)")
    # --- local training
    lr: float = _f(5e-4, "peak learning rate (AdamW), decayed by a cosine over rounds")
    lr_schedule: str = _f("cosine", "learning-rate schedule over rounds", ("cosine", "constant"))
    batch_size: int = _f(16, "local batch size")
    local_epochs: float = _f(1.0, "local epochs per round")
    max_local_steps: int | None = _f(25, "cap on local steps per round (None: full local epochs)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    lora_rank: int = _f(8, "LoRA rank of FedLoRA (uniform on all layers)")
    lora_scaling: float = _f(2.0, "LoRA alpha / r, held equal on every layer and rank")
    # --- LEGEND
    rank_budget: int | None = _f(None, "psi: total rank over all L layers (default: lora_rank * L)")
    rank_step: int = _f(1, "lambda: common difference of the rank distribution")
    ema: float = _f(0.8, "rho: moving-average weight of capacity estimates")
    initial_depth: int | None = _f(None, "LoRA depth of every device in round 1, before any report (default: ceil(L/2))")
    fixed_depths: list[int] | None = _f(None, "LEGEND: pin each device's LoRA depth (one entry per device; for controlled experiments and runtime-equivalence checks); None: LCD decides")
    compute_budget: float | None = _f(None, "C_i: per-device computing budget in units of c (None: unbounded)")
    comm_budget: float | None = _f(None, "B_i: per-device upload budget in bytes per round (None: unbounded)")
    legend_weighting: str = _f("uniform", "LEGEND's layer-wise average: plain mean over the devices that trained a layer (eq. 17) or weighted by their examples", ("uniform", "examples"))
    waiting_budget: float | None = _f(None, "epsilon: bound on the predicted mean waiting time in seconds (None: off; "
                                      "lcd 'literal' widens the depth gap to meet it, 'fill' only reports it)")
    lcd: str = _f("fill", "LEGEND's Algorithm 1: 'fill' raises depths into idle time up to the round's predicted time, "
                  "'literal' = lines 2-5 as printed (see core/lcd.py)", ("fill", "literal"))
    # --- baselines
    pretest: str | None = _f(None, "FedLoRA with a pre-test layout of the paper's section 2: layers-a/s/m/d, depth-<k>, rank-inc/dec/avg/rand")
    hetlora_r_min: int = _f(4, "HetLoRA: smallest device rank")
    hetlora_r_max: int = _f(16, "HetLoRA: largest device rank (the server's rank)")
    hetlora_gamma: float = _f(0.9, "HetLoRA: rank kept by self-pruning (and start of the penalised tail)")
    hetlora_lambda: float = _f(1e-3, "HetLoRA: strength of the rank-tail norm penalty")
    fedadapter_depth: int = _f(2, "FedAdapter: initial adapter depth d (top layers)")
    fedadapter_width: int = _f(8, "FedAdapter: initial bottleneck width w (steps of 8, at most 64)")
    fedadapter_window: int = _f(3, "FedAdapter: rounds per configuration-search window")
    # --- fleet and clock
    fleet: str = _f("jetson", "device fleet: jetson, phones, or a TOML file")
    cost_model: str = _f("profile", "how compute time is priced: 'profile' = the fleet's measured per-batch latency profiles "
                         "(devices without one fall back to FLOPs), 'flops' = FLOPs / mode throughput (see fleet/cost_model.py)",
                         ("profile", "flops"))
    report_noise: float = _f(0.0, "relative noise on devices' reported timings")
    target_accuracy: float | None = _f(None, "target accuracy for time/traffic-to-target (default: final accuracy)")
    # --- run
    device: str = _f("auto", "where training runs: auto (cuda when available), cpu or cuda", ("auto", "cpu", "cuda"))
    seed: int = _f(0, "seed of every random choice (partition, fleet, batches, dropout, init)")
    threads: int | None = _f(None, "torch CPU threads (default: all cores)")
    out_dir: str = _f("runs/default", "output folder (records, summary, adapter, plots)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        positive = ["max_length", "num_devices", "rounds", "eval_every", "batch_size", "lora_rank", "hetlora_r_min",
                    "hetlora_r_max", "fedadapter_depth", "fedadapter_width", "fedadapter_window"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ["lr", "local_epochs", "dirichlet_alpha", "lora_scaling"]:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if isinstance(self.validation_examples, bool) or not isinstance(self.validation_examples, int) or self.validation_examples < 0:
            raise ValueError(f"validation_examples must be an integer >= 0, got {self.validation_examples!r}")
        for name in ["max_local_steps", "max_examples_per_device", "max_dev_examples", "rank_budget", "initial_depth", "threads"]:
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive integer or unset, got {v!r}")
        if not 0.0 <= self.ema <= 1.0:
            raise ValueError(f"ema must be in [0, 1], got {self.ema}")
        if self.rank_step < 0:
            raise ValueError(f"rank_step must be >= 0, got {self.rank_step}")
        if self.report_noise < 0:
            raise ValueError(f"report_noise must be >= 0, got {self.report_noise}")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.hetlora_r_min > self.hetlora_r_max:
            raise ValueError(f"hetlora_r_min ({self.hetlora_r_min}) must be <= hetlora_r_max ({self.hetlora_r_max})")
        if self.pretest is not None and self.strategy != "fedlora":
            raise ValueError(f"pretest applies to strategy 'fedlora', got strategy {self.strategy!r}")
        if self.fixed_depths is not None:
            if self.strategy not in ("legend", "legend-no-rank"):
                raise ValueError(f"fixed_depths applies to strategies 'legend' and 'legend-no-rank', got {self.strategy!r}")
            if (not isinstance(self.fixed_depths, list) or len(self.fixed_depths) != self.num_devices
                    or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.fixed_depths)):
                raise ValueError(f"fixed_depths must list one positive integer depth per device ({self.num_devices}), "
                                 f"got {self.fixed_depths!r}")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"text_columns must name one or two columns, got {self.text_columns}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"config file {path!r} does not exist")
    if p.suffix == ".toml":
        data = tomllib.loads(p.read_text())
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(p.read_text()) or {}
    else:
        raise ValueError(f"config file must end in .toml, .yaml or .yml, got {path!r}")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(known)}")
    return data
