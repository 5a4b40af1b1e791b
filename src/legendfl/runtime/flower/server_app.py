"""The Flower ServerApp: drives any of our strategies, unchanged, over SuperNodes.

Per run: build the server's run context (model, dev and validation splits: ``runtime/context.py``); wait for
``min-nodes`` SuperNodes; then the same round loop as the simulator (``runtime/loop.py``) over the Flower
transport (``transport.py``): each connected device gets exactly its task's tensors, replies are collected
until every node answered or ``round-timeout-s`` passed, a silent node is recorded as missing and the round
goes on without it.

After every round the ServerApp checkpoints like the simulator (``runtime/checkpoint.py``); started again
with ``resume = 1`` in its run config, it continues the run in ``out-dir`` from the last finished round (the
nodes are asked again who they are), if the checkpoint was made with the same settings and input files. A
folder holding another run is refused unless ``overwrite = 1``. Set-up and teardown are the simulator's
(``runtime/run_session.py``). Records (``rounds.jsonl``), summary, adapter and figures are the
simulator's, written by the same code;
times are real wall-clock seconds (``clock: "real"``, ``real_time_s``), bytes are the tensors exchanged.
"""
from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ... import logs
from ...config import RunConfig, check_keys, load_config_file, normalize
from ..checkpoint import has_checkpoint
from ..context import RunContext
from ..run_session import execute_run
from .transport import Federation, FlowerTransport

log = logging.getLogger(__name__)

app = ServerApp()
# options of the simulated fleet that a real federation cannot honour: refused, never silently ignored
SIMULATOR_ONLY = ("availability", "availability_trace", "round_deadline", "round_deadline_median")


@dataclass(frozen=True)
class FederationSettings:
    """The Flower app's run config (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``)."""

    config_file: str = ""  # legendfl run options (TOML/YAML) on the SuperLink's machine; "" = defaults
    options: str = ""  # TOML lines that override the file, e.g. "rounds = 2\nnum_devices = 3"
    out_dir: str = ""  # where records go on the SuperLink's machine; "" = the run config's out_dir
    min_nodes: int = 0  # SuperNodes to wait for before round 1; 0 = num_devices
    node_wait_s: float = 300.0  # how long to wait for them
    query_timeout_s: float = 120.0  # how long a node may take to say who it is
    round_timeout_s: float = 600.0  # how long a round waits for replies before going on without a node
    resume: int = 0  # 1: continue the run in out-dir from its checkpoint (a restarted ServerApp), if it has one;
    # refused if the checkpoint's settings differ from this run config's or its input files changed
    overwrite: int = 0  # 1: replace the run that out-dir holds (otherwise a folder holding files is refused)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "FederationSettings":
        names = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(names))
        if unknown:
            raise ValueError(f"unknown run-config keys {unknown}; allowed: {sorted(names)}")
        values = {}
        for key, value in run_config.items():
            f = names[key]
            kind = {"str": str, "int": int, "float": (int, float)}[f.type]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"run-config {key} must be a {f.type}, got {value!r}")
            if f.type != "str" and value < 0:
                raise ValueError(f"run-config {key} must be >= 0, got {value!r}")
            values[f.name] = float(value) if f.type == "float" else value
        return cls(**values)

    def run_config(self) -> RunConfig:
        """Defaults < ``config-file`` < ``options`` < ``out-dir``."""
        sources = [load_config_file(self.config_file)] if self.config_file else []
        if self.options:
            try:
                sources.append(check_keys(normalize(tomllib.loads(self.options)), "run-config options"))
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"run-config options must be TOML lines (key = value): {err}") from None
        if self.out_dir:
            sources.append({"out_dir": self.out_dir})
        return RunConfig.from_sources(*sources)


def run_federation(grid: Grid, cfg: RunConfig, settings: FederationSettings) -> dict:
    """Run ``cfg.rounds`` rounds of ``cfg.strategy`` over the SuperNodes behind ``grid``; returns the summary."""
    simulated = [name for name in SIMULATOR_ONLY if getattr(cfg, name) is not None]
    if simulated:
        raise ValueError(f"{', '.join(simulated)}: simulator-only options (in Flower, devices are online when their "
                         f"SuperNode is and a round waits round-timeout-s); remove them from the run config")
    out = Path(cfg.out_dir)
    resume = bool(settings.resume) and has_checkpoint(out)
    feds: list[Federation] = []

    def transport(run_cfg: RunConfig, ctx: RunContext) -> FlowerTransport:
        fed = Federation(grid, run_cfg, ctx.label_names)
        fed.wait_for(settings.min_nodes or run_cfg.num_devices, settings.node_wait_s)
        feds.append(fed)
        return FlowerTransport(fed, run_cfg, ctx.label_names, settings.query_timeout_s, settings.round_timeout_s)

    summary = execute_run(cfg, out, make_context=RunContext.for_server, make_transport=transport,
                          overwrite=bool(settings.overwrite), resume=resume,
                          config_extra={"runtime": "flower", "federation": settings.__dict__},
                          summary_extra=lambda _: {"runtime": "flower", "devices": {
                              str(d): feds[0].identity[d] for d in sorted(feds[0].identity)}})
    log.info("records, summary and adapter in %s", out.resolve())
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    logs.configure(logging.INFO)
    settings = FederationSettings.from_run_config(dict(context.run_config))
    run_federation(grid, settings.run_config(), settings)
