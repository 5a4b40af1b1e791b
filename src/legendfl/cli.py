"""Command line: ``legendfl run``, ``fleet``, ``compare``, ``flower {credentials,worker,local}``, ``eval-adapter``.

Every option of ``run`` is a field of :class:`~legendfl.config.RunConfig`; ``--config FILE`` (TOML or YAML)
sets them first and flags override. Bad input exits with one line naming the field, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from .config import RunConfig, load_config_file


def _parse_optional(kind):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        if typing.get_origin(base) is list:
            item = (typing.get_args(base) or (str,))[0]
            parser.add_argument(flag, nargs="+", type=item, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = base if base in (int, float, str) else str
            parser.add_argument(flag, type=_parse_optional(kind) if optional else kind, default=argparse.SUPPRESS,
                                choices=f.metadata.get("choices"), help=help_text)


def build_config(ns: argparse.Namespace) -> RunConfig:
    values = load_config_file(ns.config) if getattr(ns, "config", None) else {}
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return RunConfig(**values)


def _cmd_run(ns: argparse.Namespace) -> int:
    from .runner import run

    cfg = build_config(ns)
    summary = run(cfg, progress=lambda line: print(line, flush=True))
    keys = ["final_accuracy", "best_accuracy", "target_accuracy", "time_to_target_s", "traffic_to_target_bytes",
            "virtual_time_s", "traffic_bytes", "mean_waiting_s", "wall_time_s"]
    print("summary: " + json.dumps({k: summary.get(k) for k in keys}))
    adapter = ["adapter/"] if (Path(cfg.out_dir) / "adapter").exists() else []
    print(f"outputs in {cfg.out_dir}: " + ", ".join(["rounds.jsonl", "summary.json", *adapter, *summary.get("plots", [])]))
    return 0


def _cmd_fleet(ns: argparse.Namespace) -> int:
    from .fleet.inspect import describe_fleet

    print(describe_fleet(ns.fleet, ns.num_devices, ns.seed, ns.rounds))
    return 0


def _cmd_compare(ns: argparse.Namespace) -> int:
    from .compare import run_profile

    overrides = {}
    for item in ns.set or []:
        key, sep, value = item.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(RunConfig)}:
            raise ValueError(f"--set takes key=value with a run option as key, got {item!r}")
        overrides[key] = None if value.lower() == "none" else json.loads(value) if value[:1] in "0123456789-[{" or value in ("true", "false") else value
    run_profile(ns.profile, Path(ns.out), tasks=ns.tasks, strategies=ns.strategies, target=ns.target, hub=ns.hub,
                overrides=overrides, progress=lambda line: print(line, flush=True))
    print(f"tables and figures in {ns.out}/<task>/")
    return 0


def _cmd_flower_credentials(ns: argparse.Namespace) -> int:
    from .runtime.flower.credentials import make_credentials

    c = make_credentials(Path(ns.out), ns.hosts, ns.nodes)
    print(f"CA {c.ca_cert}; SuperLink certificate {c.server_cert} and key {c.server_key} for {ns.hosts}")
    for private, public in c.node_keys:
        print(f"SuperNode key pair {private} / {public}  (register with: flwr supernode register {public} <connection>)")
    return 0


def _cmd_flower_worker(ns: argparse.Namespace) -> int:
    from .runtime.flower.worker import serve

    serve(ns.socket, progress=lambda line: print(line, flush=True))
    return 0


def _cmd_flower_local(ns: argparse.Namespace) -> int:
    from .runtime.flower.local import run_local

    status = run_local(Path(ns.config) if ns.config else None, ns.nodes, Path(ns.out), options=ns.options or "",
                       workers=ns.workers, emulate_time_scale=ns.emulate, progress=lambda line: print(line, flush=True))
    return 0 if status == "finished:completed" else 1


def _cmd_eval_adapter(ns: argparse.Namespace) -> int:
    from .models.evaluate_export import evaluate_exported

    acc = evaluate_exported(ns.adapter, ns.task, ns.model, ns.max_length)
    print(json.dumps({"accuracy": acc}))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"legendfl: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="legendfl", description="Federated LoRA fine-tuning on heterogeneous devices (LEGEND and baselines).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one federated fine-tuning job in the in-process simulator",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p_run.add_argument("--config", help="TOML or YAML file of run options (flags override it)")
    _add_config_flags(p_run)
    p_run.set_defaults(func=_cmd_run)
    p_fleet = sub.add_parser("fleet", help="inspect a device fleet: mix, modes, bandwidth percentiles")
    p_fleet.add_argument("--fleet", default="jetson", help="jetson, phones, or a TOML file")
    p_fleet.add_argument("--num-devices", type=int, default=None, help="scale the fleet to this many devices")
    p_fleet.add_argument("--seed", type=int, default=0)
    p_fleet.add_argument("--rounds", type=int, default=100, help="rounds of bandwidth draws summarised")
    p_fleet.set_defaults(func=_cmd_fleet)
    p_cmp = sub.add_parser("compare", help="run strategies side by side (same seed, partition, fleet trace): tables and figures")
    p_cmp.add_argument("--profile", default="quick", help="quick, paper, pretests, or a profile TOML file")
    p_cmp.add_argument("--strategies", nargs="+", help="strategies to compare (the first is the reference); default: the profile's")
    p_cmp.add_argument("--tasks", nargs="+", help="tasks (default: the profile's)")
    p_cmp.add_argument("--out", default="runs/compare", help="output folder; finished strategies in it are not re-run")
    p_cmp.add_argument("--target", type=float, help="target accuracy (default: the lowest final accuracy of the compared strategies)")
    p_cmp.add_argument("--hub", action="store_true", help="use the profile's hub models (needs a reachable hub)")
    p_cmp.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override run options of the profile")
    p_cmp.set_defaults(func=_cmd_compare)
    p_fl = sub.add_parser("flower", help="deploy on Flower SuperLink/SuperNodes (see docs/flower.md)")
    fl = p_fl.add_subparsers(dest="flower_command", required=True)
    p_cred = fl.add_parser("credentials", help="TLS certificates for a SuperLink and key pairs for SuperNode auth")
    p_cred.add_argument("--out", required=True, help="folder for ca.crt, server.pem/.key, node-<i>.key/.pub")
    p_cred.add_argument("--hosts", nargs="+", required=True, help="IP addresses / DNS names SuperNodes dial the SuperLink at")
    p_cred.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to make")
    p_cred.set_defaults(func=_cmd_flower_credentials)
    p_work = fl.add_parser("worker", help="long-lived training worker beside a SuperNode (node-config worker-socket)")
    p_work.add_argument("--socket", required=True, help="Unix socket path the ClientApp forwards tasks to")
    p_work.set_defaults(func=_cmd_flower_worker)
    p_loc = fl.add_parser("local", help="a whole TLS + node-auth federation on 127.0.0.1: SuperLink, N SuperNodes, one run")
    p_loc.add_argument("--config", help="run options (TOML/YAML); default: built-in defaults")
    p_loc.add_argument("--options", help="TOML lines overriding --config, e.g. 'rounds = 2'")
    p_loc.add_argument("--nodes", type=int, default=3, help="SuperNodes (devices) to start")
    p_loc.add_argument("--out", default="runs/flower-local", help="output folder (records, logs, certificates)")
    p_loc.add_argument("--workers", action="store_true", help="give every SuperNode a long-lived worker")
    p_loc.add_argument("--emulate", type=float, default=None, metavar="SCALE",
                       help="node i emulates fleet entry i, its virtual seconds times SCALE")
    p_loc.set_defaults(func=_cmd_flower_local)
    p_eval = sub.add_parser("eval-adapter", help="evaluate an exported adapter with plain transformers + peft")
    p_eval.add_argument("adapter", help="adapter folder written by a run")
    p_eval.add_argument("--task", default="sst2")
    p_eval.add_argument("--model", default="minilm")
    p_eval.add_argument("--max-length", type=int, default=128)
    p_eval.set_defaults(func=_cmd_eval_adapter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.func(ns)
    except (ValueError, KeyError, FileNotFoundError) as exc:  # bad input: one line, no traceback
        msg = exc.args[0] if exc.args else str(exc)
        print(f"legendfl: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
