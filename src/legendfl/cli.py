"""Command line: ``legendfl run``, ``fleet``, ``compare``, ``retime``, ``profile``, ``flower {credentials,worker,superexec,local}``,
``prune``, ``eval-adapter``.

Every option of ``run`` is a field of :class:`~legendfl.config.RunConfig` or an option of a strategy
(``--hetlora.r-min``); ``--config FILE`` (TOML or YAML) sets them first and flags override. Bad input exits
with one line naming the field, never a traceback (``--debug`` shows it). Progress goes through ``logging`` (``--quiet`` for
warnings only); a progress bar within rounds shows only on a terminal.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path

from . import logs
from .core.files import write_atomic
from .config import RunConfig, accepted_keys, legacy_keys, load_config_file, option_fields, option_hints
from .experiments import shipped_profiles
from .fleet.cost_model import COST_MODELS
from .runtime.flower.superexec import SUPEREXECS, TASK_TYPES, serve
from .strategies import get_entry, registered_bases, strategy_names


def _parse_optional(kind):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def _parse_bool_or_word(text: str) -> bool | str:
    try:
        return _parse_bool(text)
    except argparse.ArgumentTypeError:
        return text


def _field_default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _add_field_flag(parser: argparse.ArgumentParser, flag: str, dest: str, f: dataclasses.Field, hint, help_prefix: str = "") -> None:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint)
    default = _field_default(f)
    help_text = f"{help_prefix}{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
    if typing.get_origin(base) is list:
        item = (typing.get_args(base) or (str,))[0]
        parser.add_argument(flag, nargs="+", type=item, dest=dest, default=argparse.SUPPRESS, help=help_text)
    elif base is bool and str in args:  # true, false or a word (e.g. bf16 "auto"); the config checks the choices
        words = "/".join(str(c).lower() for c in f.metadata.get("choices", (True, False)))
        parser.add_argument(flag, type=_parse_bool_or_word, dest=dest, default=argparse.SUPPRESS, metavar=f"{{{words}}}",
                            help=help_text)
    elif base is bool:
        parser.add_argument(flag, type=_parse_bool, dest=dest, default=argparse.SUPPRESS, metavar="{true,false}", help=help_text)
    else:
        kind = base if base in (int, float, str) else str
        parser.add_argument(flag, type=_parse_optional(kind) if optional else kind, dest=dest, default=argparse.SUPPRESS,
                            choices=f.metadata.get("choices"), help=help_text)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = option_hints()
    for f in option_fields():
        if f.name == "strategy_options":
            continue
        _add_field_flag(parser, "--" + f.name.replace("_", "-"), f.name, f, hints[f.name])
    legacy = legacy_keys()
    for name, entry in sorted(registered_bases().items()):
        group = parser.add_argument_group(f"options of strategy {name} (also [strategy.{name}] in a config file)")
        hints = typing.get_type_hints(entry.options_cls)
        for f in dataclasses.fields(entry.options_cls):
            _add_field_flag(group, f"--{name}.{f.name.replace('_', '-')}", f"{name}.{f.name}", f, hints[f.name])
    group = parser.add_argument_group("flat names of earlier versions (still accepted)")
    for old, targets in sorted(legacy.items()):
        strategy, opt = targets[0]
        f = next(x for x in dataclasses.fields(registered_bases()[strategy].options_cls) if x.name == opt)
        hint = typing.get_type_hints(registered_bases()[strategy].options_cls)[opt]
        where = ", ".join(f"--{s}.{o.replace('_', '-')}" for s, o in targets)
        _add_field_flag(group, "--" + old.replace("_", "-"), old, f, hint, help_prefix=f"= {where}: ")


def build_config(ns: argparse.Namespace) -> RunConfig:
    """Defaults < ``--config`` file < flags."""
    file_values = load_config_file(ns.config) if getattr(ns, "config", None) else {}
    names = accepted_keys()
    flags = {k: v for k, v in vars(ns).items() if k in names or ("." in k and k.split(".")[0] in registered_bases())}
    return RunConfig.from_sources(file_values, flags)


def _cmd_run(ns: argparse.Namespace) -> int:
    from .experiments.runner import resume_run, run

    if ns.resume:  # flags given (argparse keeps only those) other than the command's own
        given = sorted(k for k in vars(ns) if k not in ("command", "func", "quiet", "debug", "resume", "overwrite", "config"))
        if given or ns.config or ns.overwrite:
            flags = (["--config"] if ns.config else []) + (["--overwrite"] if ns.overwrite else []) + \
                ["--" + k.replace("_", "-") for k in given]
            raise ValueError(f"--resume continues a run with its own configuration; drop {', '.join(flags)}")
        summary = resume_run(ns.resume)
        out_dir = ns.resume
    else:
        cfg = build_config(ns)
        summary = run(cfg, overwrite=ns.overwrite)
        out_dir = cfg.out_dir
    keys = ["final_accuracy", "best_accuracy", "target_accuracy", "time_to_target_s", "traffic_to_target_bytes",
            "virtual_time_s", "traffic_bytes", "mean_waiting_s", "wall_time_s"]
    print("summary: " + json.dumps({k: summary.get(k) for k in keys}))
    adapter = [name for name in ("adapter/", "pruned_model/", "global_params.safetensors") if (Path(out_dir) / name).exists()]
    print(f"outputs in {out_dir}: " + ", ".join(["rounds.jsonl", "summary.json", *adapter, *summary.get("plots", [])]))
    return 0


def _cmd_strategies(ns: argparse.Namespace) -> int:
    for name in strategy_names():
        if name.endswith("<...>"):
            print(f"{name:24s} (family of presets)")
            continue
        entry = get_entry(name)
        fixed = f"  = {entry.base} with {entry.fixed}" if entry.fixed else ""
        print(f"{name:24s} {entry.help}{fixed}")
        if entry.base == name:
            for f in dataclasses.fields(entry.options_cls):
                print(f"    --{name}.{f.name.replace('_', '-'):22s} {f.metadata.get('help', '')} (default: {_field_default(f)})")
    return 0


def _cmd_fleet(ns: argparse.Namespace) -> int:
    from .fleet.inspect import describe_fleet

    if ns.rounds <= 0:
        raise ValueError(f"--rounds must be a positive integer, got {ns.rounds}")
    print(describe_fleet(ns.fleet, ns.num_devices, ns.seed, ns.rounds))
    return 0


def _cmd_compare(ns: argparse.Namespace) -> int:
    from .experiments.compare import run_profile

    overrides = {}
    known = accepted_keys()
    for item in ns.set or []:
        key, sep, value = item.partition("=")
        if not sep or not (key in known or ("." in key and key.split(".")[0] in registered_bases())):
            raise ValueError(f"--set takes key=value with a run option (or <strategy>.<option>) as key, got {item!r}")
        literal = value[:1] in "0123456789-[{" or value in ("true", "false")  # a JSON number, list, table or bool
        overrides[key] = None if value.lower() == "none" else json.loads(value) if literal else value
    run_profile(ns.profile, Path(ns.out), tasks=ns.tasks, strategies=ns.strategies, target=ns.target, hub=ns.hub,
                overrides=overrides, seeds=ns.seeds, cost_models=ns.cost_models)
    print(f"tables and figures in {ns.out}/<task>/")
    return 0


def _cmd_retime(ns: argparse.Namespace) -> int:
    from .experiments.retiming import retime_run

    summary = retime_run(Path(ns.run), Path(ns.out), ns.cost_model, ns.fleet, ns.overwrite)
    keys = ["final_accuracy", "virtual_time_s", "time_to_target_s", "time_to_target_sustained_s", "mean_waiting_s",
            "cost_model", "note"]
    print("summary: " + json.dumps({k: summary.get(k) for k in keys}))
    print(f"re-timed records in {ns.out}")
    return 0


def _cmd_profile(ns: argparse.Namespace) -> int:
    from .experiments.profiling import profile_entry

    text = profile_entry(ns.model, ns.task, ns.batch_size, ns.seq_len, ns.rank, ns.batches, ns.device, ns.threads,
                         bf16=False if ns.no_bf16 else "auto", name=ns.name)
    if ns.out:
        write_atomic(ns.out, text)
        print(f"fleet entry written to {ns.out}")
    print(text)
    return 0


def _cmd_prune(ns: argparse.Namespace) -> int:
    from .experiments.one_shot_pruning import prune_run

    for report in prune_run(ns.run, ns.sparsity, ns.out, ns.examples_per_device):
        print(json.dumps({k: report[k] for k in ("sparsity", "accuracy", "parameters", "dense_parameters", "model_bytes")}))
    print(f"pruned models (plain transformers) and their pruning.json in {ns.out}/pruned-s<percent>/")
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

    serve(ns.socket)
    return 0


def _cmd_flower_superexec(ns: argparse.Namespace) -> int:
    serve(ns.runtime_api_address, ns.task_type, tuple(ns.preload), ns.root_certificates, ns.parent_pid)
    return 0


def _cmd_flower_local(ns: argparse.Namespace) -> int:
    from .runtime.flower.local import run_local

    status = run_local(Path(ns.config) if ns.config else None, ns.nodes, Path(ns.out), options=ns.options or "",
                       workers=ns.workers, emulate_time_scale=ns.emulate, superexec=ns.superexec)
    return 0 if status == "finished:completed" else 1


def _cmd_eval_adapter(ns: argparse.Namespace) -> int:
    from .experiments.evaluate_export import evaluate_exported

    acc = evaluate_exported(ns.adapter, ns.task, ns.model, ns.max_length, ns.max_dev_examples)
    print(json.dumps({"accuracy": acc}))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"legendfl: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="legendfl", description="Federated LoRA fine-tuning on heterogeneous devices (LEGEND and baselines).")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (instead of one line)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one federated fine-tuning job in the in-process simulator",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p_run.add_argument("--config", help="TOML or YAML file of run options (flags override it)")
    p_run.add_argument("--resume", metavar="DIR", help="continue the crashed or stopped run in DIR from its last "
                       "checkpoint, with its own configuration (the result equals an uninterrupted run's)")
    p_run.add_argument("--overwrite", action="store_true", help="replace the run in an --out-dir that already holds files")
    _add_config_flags(p_run)
    p_run.set_defaults(func=_cmd_run)
    p_strat = sub.add_parser("strategies", help="list the registered strategies, presets and their options")
    p_strat.set_defaults(func=_cmd_strategies)
    p_fleet = sub.add_parser("fleet", help="inspect a device fleet: mix, modes, bandwidth percentiles")
    p_fleet.add_argument("--fleet", default="jetson", help="jetson, phones, or a TOML file")
    p_fleet.add_argument("--num-devices", type=int, default=None, help="scale the fleet to this many devices")
    p_fleet.add_argument("--seed", type=int, default=0)
    p_fleet.add_argument("--rounds", type=int, default=100, help="rounds of bandwidth draws summarised")
    p_fleet.set_defaults(func=_cmd_fleet)
    p_cmp = sub.add_parser("compare", help="run strategies side by side (same seed, partition, fleet trace): tables and figures")
    p_cmp.add_argument("--profile", default="quick", help=f"a shipped profile ({', '.join(shipped_profiles())}) or a profile TOML file")
    p_cmp.add_argument("--strategies", nargs="+", help="strategies to compare (the first is the reference); default: the profile's")
    p_cmp.add_argument("--tasks", nargs="+", help="tasks (default: the profile's)")
    p_cmp.add_argument("--out", default="runs/compare", help="output folder; finished strategies in it are not re-run")
    p_cmp.add_argument("--target", type=float, help="target accuracy (default: the lowest final accuracy of the compared strategies)")
    p_cmp.add_argument("--hub", action="store_true", help="use the profile's hub models (needs a reachable hub)")
    p_cmp.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override run options of the profile")
    p_cmp.add_argument("--seeds", nargs="+", type=int, help="run every strategy once per seed; ratios to the first strategy are "
                       "paired by seed, with a Student-t 95%% interval on their logs from 5 seeds on and the seeds' "
                       "range below that, n shown (results in <out>/<task>/<cost model>/seed-<s>/)")
    p_cmp.add_argument("--cost-models", nargs="+", choices=COST_MODELS,
                       help="time every run under each cost model (strategies whose decisions ignore timings are re-timed, not re-run)")
    p_cmp.set_defaults(func=_cmd_compare)
    p_rt = sub.add_parser("retime", help="re-time a finished run under another cost model or fleet from its records (no training)")
    p_rt.add_argument("run", help="a run's output folder (config.json, rounds.jsonl)")
    p_rt.add_argument("--cost-model", required=True, choices=COST_MODELS, help="how compute time is priced")
    p_rt.add_argument("--fleet", help="another fleet (jetson, phones or a TOML file); default: the run's")
    p_rt.add_argument("--out", required=True, help="folder for the re-timed rounds.jsonl, config.json and summary.json "
                      "(an empty or new folder; not the run's own)")
    p_rt.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p_rt.set_defaults(func=_cmd_retime)
    p_prof = sub.add_parser("profile", help="measure this machine's per-batch training latency by LoRA depth (run it on an "
                            "otherwise idle machine); print a fleet entry")
    p_prof.add_argument("--model", default="minilm", help="packaged alias, local directory or hub id")
    p_prof.add_argument("--task", default="sst2", help="task whose real examples make the batches")
    p_prof.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    p_prof.add_argument("--seq-len", type=int, default=64, help="padded tokens per sequence")
    p_prof.add_argument("--rank", type=int, default=8, help="LoRA rank on every trained layer")
    p_prof.add_argument("--batches", type=int, default=10, help="timed batches per configuration (after 2 warm-up batches)")
    p_prof.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to measure")
    p_prof.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p_prof.add_argument("--no-bf16", action="store_true", help="measure without bf16 autocast (the trainer uses it where "
                        "the hardware computes bf16, as this command does by default)")
    p_prof.add_argument("--name", default="this-machine", help="device type name in the entry")
    p_prof.add_argument("--out", help="also write the entry to this file")
    p_prof.set_defaults(func=_cmd_profile)
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
    p_exec = fl.add_parser("superexec", help="a SuperExec for a SuperNode (or SuperLink) in process isolation that forks "
                           "each ClientApp (ServerApp) from a process that imported Flower, legendfl and --preload once")
    p_exec.add_argument("--task-type", choices=list(TASK_TYPES), default="clientapp",
                        help="clientapp beside a SuperNode, serverapp beside a SuperLink")
    p_exec.add_argument("--runtime-api-address", required=True, help="its runtime API (the --port), e.g. 127.0.0.1:9094")
    p_exec.add_argument("--root-certificates", help="the SuperLink's CA, where its runtime API uses TLS; default: plain HTTP")
    p_exec.add_argument("--preload", nargs="*", default=[], help="modules to import once, e.g. torch transformers peft")
    p_exec.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) exits")
    p_exec.set_defaults(func=_cmd_flower_superexec)
    p_loc = fl.add_parser("local", help="a whole TLS + node-auth federation on 127.0.0.1: SuperLink, N SuperNodes, one run")
    p_loc.add_argument("--config", help="run options (TOML/YAML); default: built-in defaults")
    p_loc.add_argument("--options", help="TOML lines overriding --config, e.g. 'rounds = 2'")
    p_loc.add_argument("--nodes", type=int, default=3, help="SuperNodes (devices) to start")
    p_loc.add_argument("--out", default="runs/flower-local", help="output folder (records, logs, certificates)")
    p_loc.add_argument("--workers", action="store_true", help="give every SuperNode a long-lived worker")
    p_loc.add_argument("--emulate", type=float, default=None, metavar="SCALE",
                       help="node i emulates fleet entry i, its virtual seconds times SCALE")
    p_loc.add_argument("--superexec", choices=list(SUPEREXECS), default="flower",
                       help="who starts ServerApp and ClientApp processes: " + "; ".join(f"{k}: {v}" for k, v in SUPEREXECS.items()))
    p_loc.set_defaults(func=_cmd_flower_local)
    p_prune = sub.add_parser("prune", help="prune a finished LoRA run's model once to a sparsity, by FedSpine's importance "
                             "rule (for comparisons at equal sparsity); save it for plain transformers and evaluate it")
    p_prune.add_argument("run", help="a run's output folder (config.json, adapter/)")
    p_prune.add_argument("--sparsity", type=float, nargs="+", required=True,
                         help="shares of heads and FFN channels pruned, each in [0, 1) (one model each, one scoring)")
    p_prune.add_argument("--out", required=True, help="folder for the pruned models (pruned-s<percent>/, with pruning.json)")
    p_prune.add_argument("--examples-per-device", type=int, default=64, help="examples each device scores its groups on")
    p_prune.set_defaults(func=_cmd_prune)
    p_eval = sub.add_parser("eval-adapter", help="evaluate an exported adapter or pruned model with plain transformers + peft")
    p_eval.add_argument("adapter", help="adapter/ or pruned_model/ folder written by a run, or a folder `prune` wrote")
    p_eval.add_argument("--task", default="sst2")
    p_eval.add_argument("--model", default="minilm")
    p_eval.add_argument("--max-length", type=int, default=128)
    p_eval.add_argument("--max-dev-examples", type=int, default=None, metavar="N",
                        help="the first N dev examples only, as a run with max_dev_examples = N evaluates (default: all)")
    p_eval.set_defaults(func=_cmd_eval_adapter)
    return parser


def error_line(exc: BaseException) -> str:
    """One line for an error that ends a command: what was wrong, naming the field, file or option."""
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        where = f" {exc.filename!r}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or exc}"
    text = str(exc.args[0]) if isinstance(exc, ValueError) and exc.args else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    if isinstance(exc, ValueError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first} (an unexpected error: run again with --debug for the traceback, and "\
           f"please report it)" if first else f"{type(exc).__name__} (run again with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    ns = parser.parse_args(argv)
    logs.configure(logging.WARNING if ns.quiet else logging.INFO, sys.stdout)
    try:
        return ns.func(ns)
    except KeyboardInterrupt:
        print("legendfl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`legendfl fleet | head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # bad input: one line naming the field (the traceback with --debug)
        if ns.debug:
            raise
        print(f"legendfl: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
