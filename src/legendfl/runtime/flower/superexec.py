"""A SuperExec that starts every ServerApp and ClientApp process by forking a warm one (process isolation).

Flower 1.41's SuperExec starts ``flwr-serverapp`` for every run and ``flwr-clientapp`` for every message, each a
new Python process. On this 2-core machine a ClientApp process spends about 1 s of CPU importing before it reads
its message, and about 4 s more where the node trains in that process (torch, transformers, peft); a ServerApp,
about 5.7 s; on a Jetson, several times that, every round (docs/flower.md says how this was measured).
``legendfl flower superexec`` is Flower's SuperExec loop unchanged (``flwr.supercore.superexec.run_superexec``:
it acquires each task's token from the SuperLink or SuperNode) with one part replaced, the executor: a task's
process is forked from a ``multiprocessing`` forkserver that imported Flower's app runtime, our app and the
``--preload`` modules once, and never ran a task. Every task still runs in a process of its own that ends with
it (Flower's isolation holds: nothing one task leaves in memory reaches the next), which runs Flower's own
``run_clientapp`` or ``run_serverapp``::

    flower-supernode ... --isolation process --port 9094 &
    legendfl flower superexec --runtime-api-address 127.0.0.1:9094 --preload torch transformers peft &

    flower-superlink ... --isolation process --port 9093 &
    legendfl flower superexec --task-type serverapp --runtime-api-address 127.0.0.1:9093 --root-certificates ca.crt \
        --preload torch transformers peft &

What it does not do: task types other than ServerApps and ClientApps (simulation, agents), runtime dependency
installation (refused, as ``--disable-runtime-dependency-installation`` everywhere in this project). Needs the
``fork`` system call (Linux, macOS).
"""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import multiprocessing.forkserver
import os

log = logging.getLogger(__name__)

# who starts the ServerApp process of each run and the ClientApp process of each message
SUPEREXECS = {
    "flower": "Flower's own (subprocess isolation): a new flwr-serverapp / flwr-clientapp Python process each time",
    "fork": "`legendfl flower superexec` beside the SuperLink and each SuperNode (process isolation): each such "
            "process forks from one that imported Flower, legendfl and, where it trains, torch/transformers/peft once",
}
# what a node that trains in its ClientApp process (no worker-socket), or a ServerApp, imports for every task
TRAINING_PRELOAD = ("torch", "transformers", "peft", "legendfl.runtime.context")


def _run_clientapp(runtime_api_address: str, token: str, insecure: bool, root_certificates_path: str | None,
                   parent_pid: int | None) -> None:
    """The body of ``flwr-clientapp`` (``flwr.supernode.cli.flwr_clientapp``), in a forked process."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    run_clientapp(runtime_api_address=runtime_api_address, token=token, insecure=insecure,
                  certificates=validate_and_resolve_root_certificates(root_certificates_path, insecure),
                  parent_pid=parent_pid, runtime_dependency_install=False)


def _run_serverapp(runtime_api_address: str, token: str, insecure: bool, root_certificates_path: str | None,
                   parent_pid: int | None) -> None:
    """The body of ``flwr-serverapp`` (``flwr.superlink.cli.flwr_serverapp``), in a forked process."""
    from queue import Queue

    from flwr.superlink.runtime import run_serverapp
    from flwr.supercore.logger import mirror_output_to_queue, restore_output
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    log_queue: Queue[str | None] = Queue()
    mirror_output_to_queue(log_queue)  # the run's output streams to `flwr run --stream`, as from flwr-serverapp
    run_serverapp(runtime_api_address=runtime_api_address, log_queue=log_queue, token=token, insecure=insecure,
                  certificates=validate_and_resolve_root_certificates(root_certificates_path, insecure),
                  parent_pid=parent_pid, runtime_dependency_install=False)
    restore_output()


# --task-type -> (Flower's TaskType value, what its process runs, what that imports first)
TASK_TYPES = {
    "clientapp": ("flwr-clientapp", _run_clientapp, ("flwr.supernode.runtime.run_clientapp", "legendfl.runtime.flower.client_app")),
    "serverapp": ("flwr-serverapp", _run_serverapp, ("flwr.superlink.runtime", "legendfl.runtime.flower.server_app")),
}


class ForkingExecutor:
    """Flower's ``Executor`` protocol (``flwr.supercore.superexec.executor.types``) for one task type: each task
    is a process forked from a forkserver that preloaded that app's modules and ``preload``."""

    def __init__(self, task_type: str = "clientapp", preload: tuple[str, ...] = ()) -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(f"--task-type must be one of {list(TASK_TYPES)}, got {task_type!r}")
        missing = [name for name in preload if importlib.util.find_spec(name) is None]
        if missing:  # a misspelt module fails here, once, not in every task
            raise ValueError(f"--preload: no module named {missing[0]!r}")
        self.flower_type, self.target, modules = TASK_TYPES[task_type]
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload([*modules, *preload])
        multiprocessing.forkserver.ensure_running()  # import now, beside the SuperNode's start, not in the first task
        self.running: list = []

    def get_eligible_capacity(self, supported_task_types, *, insecure=False, root_certificates_path=None):
        return {t for t in supported_task_types if t == self.flower_type}, set()

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure=False, root_certificates_path=None) -> None:
        return None

    def launch(self, spec):
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != self.flower_type:
            return LaunchResult.failed(f"this SuperExec starts {self.flower_type} tasks only, not {spec.task_type}")
        if spec.runtime_dependency_install:
            return LaunchResult.failed("this SuperExec installs no runtime dependencies")
        process = self.context.Process(target=self.target, name=f"{spec.task_type}-task-{spec.task_id}",
                                       args=(spec.runtime_api_address, spec.token, spec.insecure,
                                             spec.root_certificates_path, spec.parent_pid))
        process.start()
        self.running.append(process)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        self.running = [p for p in self.running if p.is_alive()]  # is_alive() reaps a finished process

    def close(self) -> None:
        for process in self.running:
            process.terminate()
        for process in self.running:
            process.join(5)
        self.running = []


def serve(runtime_api_address: str, task_type: str = "clientapp", preload: tuple[str, ...] = (),
          root_certificates: str | None = None, parent_pid: int | None = None) -> None:
    """Run Flower's SuperExec loop against a runtime API with the forking executor, until stopped.
    ``root_certificates``: the CA of a SuperLink whose runtime API uses TLS; without it, plain HTTP."""
    from flwr.supercore.superexec import run_superexec as flower_superexec

    executor = ForkingExecutor(task_type, preload)
    # Flower 1.41 chooses its executor by name (subprocess, kubernetes) and has no hook for another: its loop
    # asks this module-level factory, so it gets ours; everything else is Flower's code, unchanged.
    flower_superexec.get_executor = lambda *args, **kwargs: executor
    log.info("legendfl SuperExec %d for the %s tasks of %s; each forks from a process that imported %s", os.getpid(),
             task_type, runtime_api_address, ", ".join(preload) or "Flower and legendfl only")
    flower_superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=root_certificates is None,
                                   root_certificates_path=root_certificates, parent_pid=parent_pid,
                                   runtime_dependency_install=False)
