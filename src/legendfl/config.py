"""The run configuration: common options, local training options and the chosen strategy's own options.

Values come from defaults, then a TOML/YAML config file, then command-line flags (highest priority); every
source goes through :func:`normalize`, so the same keys mean the same thing everywhere.

A strategy's options live in a section named after it (its ``Options`` dataclass, ``strategies/``)::

    strategy = "hetlora"            # or, equivalently, a table:   [strategy]
    [strategy_options.hetlora]      #                               name = "hetlora"
    r_min = 2                       #                               [strategy.hetlora]
                                    #                               r_min = 2

On the command line: ``--hetlora.r-min 2`` (or ``--set hetlora.r_min=2`` in ``compare``). The flat keys of
earlier versions (``hetlora_r_min``, ``rank_step``, ``lcd``, ...) still work: each strategy's options
declare them (``Options.legacy``, the one translation table) and they are moved into the sections
here, with a ``FutureWarning`` that names the new key.
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.options import option, validate
from .core.training import DEFAULT_LR, TrainConfig
from .fleet.cost_model import COST_MODELS
from .fleet.devices import MAX_FLEET_SIZE


def _registry():
    """The strategy registry with the built-in strategies registered. Imported on first use, so that importing
    this module does not import torch; building a :class:`RunConfig` does (it checks the strategy's options, and
    strategies import torch)."""
    from . import strategies

    return strategies


def legacy_keys() -> dict[str, list[tuple[str, str]]]:
    """Flat key of earlier versions -> [(strategy, option)] (one key may feed several strategies, e.g. ``ema``)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, entry in _registry().registered_bases().items():
        for old, new in entry.options_cls.legacy.items():
            out.setdefault(old, []).append((name, new))
    return out


def normalize(data: dict[str, Any]) -> dict[str, Any]:
    """One source of options in the canonical form: a ``[strategy]`` table and flat legacy keys are folded
    into ``strategy`` (a name) and ``strategy_options`` ({strategy: {option: value}}); dotted keys
    (``hetlora.r_min`` from flags, or a ``[hetlora]`` table) likewise."""
    data = dict(data)
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (data.pop("strategy_options", None) or {}).items()}
    if isinstance(data.get("strategy"), dict):
        table = dict(data.pop("strategy"))
        if "name" in table:
            data["strategy"] = table.pop("name")
        for name, values in table.items():
            if not isinstance(values, dict):
                raise ValueError(f"strategy.{name} must be a table of options of strategy {name!r} (or use name = ...)")
            sections.setdefault(name, {}).update(values)
    legacy = legacy_keys()
    for key in [k for k in data if k in legacy]:
        value = data.pop(key)
        warnings.warn(f"option {key!r} is deprecated: use {' / '.join(f'{s}.{o}' for s, o in legacy[key])} "
                      f"([strategy.<name>] in a config file, --<name>.<option> on the command line)", FutureWarning,
                      stacklevel=2)
        for strategy, opt in legacy[key]:
            sections.setdefault(strategy, {})[opt] = value
    for key in [k for k in data if "." in k]:
        strategy, _, opt = key.partition(".")
        sections.setdefault(strategy, {})[opt] = data.pop(key)
    bases = _registry().registered_bases()
    for key in [k for k, v in data.items() if isinstance(v, dict) and k in bases]:  # TOML `hetlora.r_min = 2`
        sections.setdefault(key, {}).update(data.pop(key))
    if sections:
        data["strategy_options"] = sections
    return data


def merge(*sources: dict[str, Any]) -> dict[str, Any]:
    """Later sources override earlier ones, option by option (also inside strategy sections)."""
    out: dict[str, Any] = {}
    for src in sources:
        src = normalize(src)
        sections = src.pop("strategy_options", {})
        out.update(src)
        merged = out.setdefault("strategy_options", {})
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
    if not out.get("strategy_options"):
        out.pop("strategy_options", None)
    return out


def option_fields() -> list[dataclasses.Field]:
    """Every run option as files, flags and ``config.json`` name it (one flat namespace): the local training
    options (:class:`TrainConfig`, ``RunConfig.train``) first, then the run's own."""
    return [*dataclasses.fields(TrainConfig), *(f for f in dataclasses.fields(RunConfig) if f.name != "train")]


def option_hints() -> dict[str, Any]:
    """The type of each option of :func:`option_fields`."""
    return {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(RunConfig)}


def accepted_keys() -> set[str]:
    """Every flat name a source of options may use: the options of :func:`option_fields` and the flat names of
    earlier versions (which :func:`normalize` translates)."""
    return {f.name for f in option_fields()} | set(legacy_keys())


TRAIN_OPTIONS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class RunConfig:
    """A run's options: the common ones here, local training in ``train`` (:class:`TrainConfig`), the chosen
    strategy's in ``strategy_options``. Files, flags and ``config.json`` name all of them in one flat namespace
    (``batch_size``, not ``train.batch_size``): build one from such a table with :meth:`from_sources` or
    :meth:`from_record`."""

    # --- task and data
    task: str = option("sst2", "built-in task (sst2, qnli, qqp, mnli; generative with a decoder --model: gsm8k, mmlu, or "
                       "instructions with a prompt/response --data-file), a hub dataset like glue/sst2, or 'file' with "
                       "--data-file")
    data_file: str | None = option(None, "your own training file (.csv/.tsv/.json/.jsonl[.gz])")
    dev_file: str | None = option(None, "your own dev file; without it 10% of --data-file is held out")
    text_columns: list[str] = option(["text"], "one or two text columns of --data-file")
    label_column: str = option("label", "label column of --data-file (string or integer labels, any number of classes)")
    prompt_field: str = option("prompt", "prompt field of --data-file for --task instructions (a decoder's own data)")
    response_field: str = option("response", "response field of --data-file for --task instructions")
    max_dev_examples: int | None = option(None, "evaluate on the first N dev examples only (None: the whole dev split)",
                                          minimum=1, integer=True)
    validation_examples: int = option(500, "training examples the server holds out (no device trains on them) to choose "
                                      "between candidate models, e.g. FedAdapter's trial groups; never the reported dev split",
                                      minimum=0, integer=True)
    max_length: int = option(128, "maximum tokens per example (the paper: 512)", minimum=1, integer=True)
    max_new_tokens: int = option(256, "tokens a generated answer may take (GSM-8K evaluation)", minimum=1, integer=True)
    # --- model
    model: str = option("minilm", "packaged alias (minilm), a local Hugging Face directory, or a hub id (roberta-base)")
    # --- federation
    strategy: str = option("legend", "federated algorithm or preset (see `legendfl strategies`)")
    strategy_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, metadata={
        "help": "options of each strategy by its name ([strategy.<name>] in TOML, --<name>.<option> on the command line)"})
    num_devices: int = option(10, "devices in the fleet (the fleet's mix is kept when scaled; at most one per training "
                              "example, and at most 100,000: a simulated device's state takes memory)", minimum=1,
                              maximum=MAX_FLEET_SIZE, integer=True)
    partition: str = option("dirichlet", "how data is split over devices", choices=("dirichlet", "iid"))
    dirichlet_alpha: float = option(10.0, "Dirichlet alpha of the label skew (the paper: 10)", minimum=0.0, exclusive_minimum=True)
    max_examples_per_device: int | None = option(None, "keep at most this many examples per device (None: all)",
                                                 minimum=1, integer=True)
    rounds: int = option(10, "federated rounds", minimum=1, integer=True)
    eval_every: int = option(1, "evaluate the global model every N rounds (and after the last)", minimum=1, integer=True)
    lr: float = option(DEFAULT_LR, "peak learning rate (AdamW), decayed by a cosine over rounds (the paper's)", minimum=0.0,
                       exclusive_minimum=True)
    lr_schedule: str = option("cosine", "learning-rate schedule over rounds", choices=("cosine", "constant"))
    lora_rank: int = option(8, "LoRA rank of uniform layouts (FedLoRA, pre-tests); LEGEND's default budget psi = lora_rank * L",
                            minimum=1, integer=True)
    # --- fleet and clock
    fleet: str = option("jetson", "device fleet: jetson, phones, or a TOML file")
    cost_model: str = option("profile", "how compute time is priced: 'profile' = the fleet's measured per-batch latency "
                             "profiles (devices without one fall back to FLOPs), 'flops' = FLOPs / mode throughput "
                             "(see fleet/cost_model.py)", choices=COST_MODELS)
    availability: float | None = option(None, "probability that a device is online in a round, for every device (None: "
                                        "the fleet file's per-type availability, 1.0 unless it says; 0 would leave every "
                                        "round empty)", minimum=0.0, maximum=1.0, exclusive_minimum=True)
    availability_trace: str | None = option(None, "JSON file: device id -> online flags (0/1) by round (see fleet/availability.py)")
    round_deadline: float | None = option(None, "seconds of virtual time a round waits; devices finishing later are dropped "
                                          "from its aggregation (their traffic counts). None: no deadline",
                                          minimum=0.0, exclusive_minimum=True)
    round_deadline_median: float | None = option(None, "a deadline of this multiple of the round's median device completion "
                                                 "time (instead of --round-deadline seconds)", minimum=0.0, exclusive_minimum=True)
    max_update_norm: float | None = option(None, "reject a device's update whose change (L2 norm over all its tensors) "
                                           "exceeds this (None: the most its AdamW steps can change it, "
                                           "core/validation.py; inf: no bound; NaN/Inf, missing keys, wrong shapes "
                                           "or dtypes and more examples than the device holds are always rejected)",
                                           minimum=0.0, exclusive_minimum=True)
    report_noise: float = option(0.0, "relative noise on devices' measured timings (simulator)", minimum=0.0)
    target_accuracy: float | None = option(None, "target accuracy for time/traffic-to-target (default: final accuracy)",
                                           minimum=0.0, maximum=1.0, exclusive_minimum=True)
    # --- run
    device: str = option("auto", "where training runs: auto (cuda when available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    threads: int | None = option(None, "torch CPU threads (default: all cores)", minimum=1, integer=True)
    engine: str = option("batched", "simulator: train a round's LoRA devices together through one frozen base "
                         "('batched', the same results as 'sequential', see engine/batched_training.py) or one after "
                         "another ('sequential'); bottleneck adapters and full fine-tuning always run one after another",
                         choices=("batched", "sequential"))
    max_batch_tokens: int | None = option(None, "batched engine: padded tokens one step may stack; more devices are "
                                          "split into groups (None: from a memory budget, 4 GiB of activations on "
                                          "CPU, half the memory of a GPU)", minimum=1, integer=True)
    out_dir: str = option("runs/default", "output folder (records, summary, adapter, plots)")
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig, metadata={
        "help": "local training options (the same for every device; flat keys in files and flags: batch_size, ...)"})

    def __post_init__(self) -> None:
        validate(self)
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if not isinstance(self.text_columns, list) or not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"text_columns must name one or two columns, got {self.text_columns}")
        for name in ("data_file", "dev_file", "availability_trace", "out_dir", "task", "model", "fleet", "label_column",
                     "prompt_field", "response_field"):
            if getattr(self, name) == "":
                raise ValueError(f"{name} must not be empty")
        default_task = next(f.default for f in dataclasses.fields(self) if f.name == "task")
        if self.data_file is not None and self.task not in ("file", "instructions", default_task):
            raise ValueError(f"task must be 'file' (or 'instructions' for a decoder) when data_file is given, got "
                             f"{self.task!r}: the data file replaces a built-in task")
        if self.round_deadline is not None and self.round_deadline_median is not None:
            raise ValueError("round_deadline and round_deadline_median are exclusive: set one of them")
        entry = _registry().get_entry(self.strategy)  # refuses unknown names
        if not isinstance(self.strategy_options, dict):
            raise ValueError(f"strategy_options must map strategy names to tables of options, got {self.strategy_options!r}")
        bases = _registry().registered_bases()
        for name, section in self.strategy_options.items():
            if name not in bases:
                raise ValueError(f"options given for unknown strategy {name!r}; strategies with options: {sorted(bases)}")
            if not isinstance(section, dict):
                raise ValueError(f"options of strategy {name!r} must be a table, got {section!r}")
            bases[name].options(section)  # validates
        chosen = entry.options(self.strategy_options.get(entry.base))
        chosen.check_run(self)  # the strategy's checks against the common options

    @classmethod
    def from_sources(cls, *sources: dict[str, Any]) -> "RunConfig":
        """Defaults < each source in turn (a config file's values, then flags)."""
        return cls.from_flat(merge(*sources))

    @classmethod
    def from_flat(cls, data: dict[str, Any]) -> "RunConfig":
        """From one flat table of options (canonical form, :func:`normalize`): the training options go to ``train``."""
        train = TrainConfig(**{k: v for k, v in data.items() if k in TRAIN_OPTIONS})
        return cls(**{k: v for k, v in data.items() if k not in TRAIN_OPTIONS}, train=train)

    @classmethod
    def from_record(cls, data: Any, where: str) -> "RunConfig":
        """The configuration a run recorded (``config.json``, a checkpoint), refused in one line naming ``where``
        if it is not one (a field unknown to this version, a bad value)."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: the run's configuration must be a table of options, got {type(data).__name__}")
        known = {f.name for f in option_fields()}
        unknown = sorted(set(data) - known - {"runtime", "retimed_from", "federation"})
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown} (written by another version of legendfl?)")
        try:
            return cls.from_flat({k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None

    def entry(self):
        """The registry entry of the chosen strategy (``strategies.registry.StrategyEntry``)."""
        return _registry().get_entry(self.strategy)

    def strategy_options_resolved(self) -> Any:
        """The chosen strategy's options dataclass (its section, then a preset's fixed options)."""
        entry = self.entry()
        return entry.options(self.strategy_options.get(entry.base))

    def build_strategy(self):
        return _registry().build_strategy(self.strategy, self.strategy_options, lr=self.lr, rounds=self.rounds,
                                          lr_schedule=self.lr_schedule, seed=self.train.seed, lora_rank=self.lora_rank,
                                          max_update_norm=self.max_update_norm)

    def to_json(self) -> dict:
        """Every option, flat (the training options first); the chosen strategy's section lists all its resolved
        options."""
        out = {**dataclasses.asdict(self.train), **dataclasses.asdict(self)}
        del out["train"]
        entry = self.entry()
        sections = {k: dict(v) for k, v in self.strategy_options.items()}
        sections[entry.base] = dataclasses.asdict(self.strategy_options_resolved())
        out["strategy_options"] = sections
        return out


def load_config_file(path: str) -> dict:
    """A TOML/YAML file's options in canonical form (unknown keys refused, naming them)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"config file {path!r} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"config file {path!r} cannot be read: {err}") from None
    if p.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path!r} is not valid TOML: {err}") from None
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config file must end in .toml, .yaml or .yml, got {path!r}")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a table of options")
    return check_keys(normalize(data), f"config file {path}")


def check_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in option_fields()}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {where}; allowed: {sorted(accepted_keys())}")
    return data
