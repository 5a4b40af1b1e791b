"""Shared fixtures (the real model and data, loaded once) and helpers of the test suite."""
import contextlib
import io
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one torch thread per test process, and in the processes tests start (their OpenMP reads this at start-up):
# `make test` runs one pytest worker per core (pytest -n), and threads beyond the cores spin and wait for each
# other (a tiny model's step took 30x longer with 2 threads per process on 2 busy cores)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

RECORD_KEYS = {"round", "strategy", "runtime", "clock", "lr", "virtual_time_s", "round_time_s", "mean_waiting_s", "traffic_bytes",
               "downlink_bytes", "uplink_bytes", "round_downlink_bytes", "round_uplink_bytes", "accuracy",
               "eval_loss", "aggregation", "devices", "wall_s"}
DEVICE_KEYS = {"kind", "mode", "download_s", "forward_s", "backward_s", "upload_s", "total_s", "waiting_s",
               "examples", "tokens", "forward_flops", "backward_flops", "download_bytes", "upload_bytes"}


def cli(*args, timeout=600, cwd=None, process=False):
    """``legendfl <args>``: its exit code, standard output and error, as ``subprocess.run`` gives them.

    In this process by default (``legendfl.cli.main`` with the standard streams captured; torch, transformers
    and the model are imported once per suite, not once per call, which saves seconds a call); with
    ``process=True`` in a fresh Python, for what only a process shows (start-up, a hang bounded by ``timeout``,
    the environment's effect on third-party loggers)."""
    if process:
        # CI=true makes transformers send its warnings to the root logger: commands must keep them off stdout
        env = {**os.environ, "CI": "true"}
        return subprocess.run([sys.executable, "-m", "legendfl", *args], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd)
    from legendfl.cli import main
    from legendfl.runtime.checkpoint import FAILPOINT_ENV

    if os.environ.get(FAILPOINT_ENV):  # the fault kills the process that runs it: the test's, here
        raise RuntimeError(f"{FAILPOINT_ENV} is set: run this command with process=True")
    out, err = io.StringIO(), io.StringIO()
    here, threads = os.getcwd(), torch.get_num_threads()
    logger = logging.getLogger("legendfl")  # main() points it at the captured stdout: restored afterwards
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)  # a run sets the process's threads (--threads)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    return subprocess.CompletedProcess(["legendfl", *args], code, out.getvalue(), err.getvalue())


class ChildRun:
    """``legendfl <args>`` in a child process forked from a server that imported torch, transformers, peft and
    legendfl once (``multiprocessing``'s forkserver): a process of its own, which SIGKILL kills as it kills a
    fresh Python, without paying seconds of imports per child. ``env``: variables set in the child only.
    The child's standard streams go to /dev/null. ``poll``, ``send_signal``, ``wait`` and ``returncode`` as
    ``subprocess.Popen`` has them."""

    PRELOAD = ["torch", "transformers", "peft", "transformers.models.bert.modeling_bert", "legendfl.cli",
               "legendfl.experiments.runner"]
    _context = None

    def __init__(self, *args, env=None):
        if ChildRun._context is None:
            ChildRun._context = multiprocessing.get_context("forkserver")
            ChildRun._context.set_forkserver_preload(self.PRELOAD)
        self.process = ChildRun._context.Process(target=_child_main, args=([str(a) for a in args], dict(env or {})))
        self.process.start()

    def poll(self):
        return self.process.exitcode

    def send_signal(self, sig):
        os.kill(self.process.pid, sig)

    def wait(self, timeout=None):
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(["legendfl"], timeout)
        return self.process.exitcode

    @property
    def returncode(self):
        return self.process.exitcode


def _child_main(args, env):
    from legendfl.cli import main

    os.environ.update(env)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.exit(main(args))


def check_records(records):
    for rec in records:
        assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
        for d in rec["devices"].values():
            assert DEVICE_KEYS <= set(d)
            assert d["total_s"] == pytest.approx(d["download_s"] + d["forward_s"] + d["backward_s"] + d["upload_s"], abs=1e-3)
        assert rec["round_time_s"] == pytest.approx(max(d["total_s"] for d in rec["devices"].values()), abs=1e-3)
        assert rec["round_uplink_bytes"] == sum(d["upload_bytes"] for d in rec["devices"].values())
        assert rec["round_downlink_bytes"] == sum(d["download_bytes"] for d in rec["devices"].values())


def tiny_decoder(kind, path, tokenizer):
    """A tiny random Llama or GPT-2 (4 layers, 32 wide) saved to ``path`` and loaded as a causal-LM backbone."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from legendfl.models.backbone import load_backbone

    torch.manual_seed(0)
    vocab = len(tokenizer)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=128))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_backbone(str(path), task_type="causal_lm", seed=0)


def tiny_bert(path):
    """A tiny random BERT (6 layers like MiniLM, 32 wide) with MiniLM's tokenizer, saved to ``path``: for tests of
    what does not depend on learning (folders, checkpoints, resume, errors, runtimes' plumbing); ``--model <path>``
    runs it like any local model."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from legendfl.models.backbone import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=6, num_attention_heads=2, max_position_embeddings=512)
                                  ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# built once per machine (os.replace makes a concurrent build harmless); the name changes with the shape above
TINY_BERT = str(Path(tempfile.gettempdir()) / f"legendfl-tiny-bert-6x32-{os.getuid()}")


def _build_tiny_bert() -> str:
    if not (Path(TINY_BERT) / "config.json").exists():
        staging = Path(tempfile.mkdtemp(prefix="legendfl-tiny-bert-"))
        tiny_bert(staging)
        try:
            os.replace(staging, TINY_BERT)
        except OSError:  # another session built it first
            shutil.rmtree(staging, ignore_errors=True)
    return TINY_BERT


def relative_error(a, b) -> float:
    """||a - b|| / ||b|| (b's norm floored at 1e-12): the equivalence tests' measure of two tensors' distance."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def linear_macs(model, inputs) -> int:
    """Multiply-adds of every nn.Linear in one forward, from the shapes that really ran; BERT's pooler is left out,
    as core.flops leaves it out (one hidden x hidden product per sequence, next to the layers' per token)."""
    total = [0]

    def hook(module, args, out):
        total[0] += args[0].numel() // module.in_features * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".pooler." not in f".{n}."]
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    return total[0]


@pytest.fixture(scope="session", autouse=True)
def tiny_bert_dir():
    return _build_tiny_bert()


@pytest.fixture(scope="session")
def backbone():
    from legendfl.models.backbone import load_backbone

    return load_backbone("minilm", num_labels=2, seed=0)


@pytest.fixture(scope="session")
def sst2():
    from legendfl.data.tasks import load_task

    return load_task("sst2")


@pytest.fixture(scope="session")
def sst2_small(backbone, sst2):
    """Real SST-2: 600 training and 200 dev examples, tokenised."""
    from legendfl.models.tokenized import TokenizedData

    return TokenizedData(backbone.tokenizer, sst2.train[:600], 64), TokenizedData(backbone.tokenizer, sst2.dev[:200], 64)


# The suite's long chains first (pytest -n, --dist loadgroup): each group runs on one worker, so a group that
# starts last ends the suite late while the other worker idles. Longest first (measured, 2 workers on 2 cores: the
# Flower module about 315 s, its emulated fleet 120 s, resume 115 s, end-to-end 100 s, the Flower server 55 s);
# the rest keep their order.
LONG_GROUPS = ("flower", "flower_emulated", "resume", "end_to_end", "flower_server")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        marker = item.get_closest_marker("xdist_group")
        group = marker.args[0] if marker and marker.args else None
        return LONG_GROUPS.index(group) if group in LONG_GROUPS else len(LONG_GROUPS)

    items.sort(key=rank)  # stable: within a group and among the rest, collection order
