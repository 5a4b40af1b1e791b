"""A whole Flower federation on this machine's loopback: a SuperLink, N SuperNodes, TLS and node auth.

Used by the tests and by ``legendfl flower local`` (a dry run of a deployment before touching a fleet).
Every process is started in its own session and stopped by its PID (its process group: the SuperNode's
SuperExec and ClientApp children go with it), never by name; with ``superexec="fork"`` the ``legendfl flower
superexec`` beside the SuperLink and each SuperNode is stopped with it. Addresses are 127.0.0.1 only.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from .credentials import Credentials, make_credentials
from .superexec import SUPEREXECS, TRAINING_PRELOAD

CONNECTION = "legendfl-local"
# the Flower App (its pyproject names our ServerApp and ClientApp): shipped inside the package, so it is found
# in any installation; deploy/flower in the repository points here
APP_DIR = Path(__file__).resolve().parent / "app"
log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: no telemetry, no update check, our own Flower configuration."""
    env = dict(os.environ)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", FLWR_HOME=str(flwr_home))
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def _toml_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value).lower() if isinstance(value, bool) else repr(value)


def node_config_arg(node_config: dict[str, Any]) -> str:
    """``--node-config`` text: ``key=value`` pairs, strings quoted as TOML wants."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class LocalFederation:
    """Start with :meth:`start`; always :meth:`close` (a ``with`` block does)."""

    def __init__(self, workdir: Path, *, tls: bool = True, node_auth: bool = True, superexec: str = "flower") -> None:
        if node_auth and not tls:
            raise ValueError("node_auth needs tls: Flower authenticates SuperNodes only over TLS")
        if superexec not in SUPEREXECS:
            raise ValueError(f"superexec must be one of {list(SUPEREXECS)}, got {superexec!r}")
        self.superexec = superexec
        self.workdir = Path(workdir)
        self.tls, self.node_auth = tls, node_auth
        self.home = self.workdir / "flwr-home"
        self.env = flower_env(self.home)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.credentials: Credentials | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:  # __exit__ is not called when __enter__ fails: stop what was started
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -- processes -------------------------------------------------------------------------------------------
    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("w") as fh:
            proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                    start_new_session=True)
        self.processes[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """Stop one process and its children by PID (SIGTERM to its process group, SIGKILL if it lingers); a
        SuperNode with its SuperExec."""
        self._stop([name, f"{name}-superexec"], timeout)

    def _stop(self, names: list[str], timeout: float) -> None:
        """SIGTERM to every named process group at once, then wait for all together (at most ``timeout`` s),
        SIGKILL to what lingers and to children that outlived their group leader (group id = the leader's PID)."""
        procs = [self.processes[n] for n in names if n in self.processes]
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + wait
            for proc in procs:
                if proc.poll() is None:
                    _signal_group(proc, sig)
            for proc in procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if all(proc.poll() is not None for proc in procs):
                break
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)

    def close(self) -> None:
        self._stop([n for n in self.processes if n != "superlink"], 15.0)  # nodes, workers and SuperExecs together
        self._stop(["superlink", "superlink-superexec"], 15.0)

    def log(self, name: str) -> str:
        return self.logs[name].read_text() if name in self.logs and self.logs[name].exists() else ""

    # -- federation ------------------------------------------------------------------------------------------
    def start(self, wait_s: float = 60.0) -> "LocalFederation":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        connection = {"address": self.address}
        if self.tls:
            self.credentials = make_credentials(self.workdir / "certs", ["127.0.0.1", "localhost"], 0)
            c = self.credentials
            cmd += ["--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert),
                    "--ssl-keyfile", str(c.server_key)]
            connection["root-certificates"] = str(c.ca_cert)
        else:
            cmd.append("--insecure")
            connection["insecure"] = True
        if self.node_auth:
            cmd.append("--enable-supernode-auth")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            + "".join(f"{k} = {_toml_value(v)}\n" for k, v in connection.items()))
        if self.superexec == "flower":
            self._spawn("superlink", cmd)
        else:  # its runtime API is on the same port, with the same TLS
            link = self._spawn("superlink", cmd + ["--isolation", "process"])
            self._start_superexec("superlink", "serverapp", self.port, link, TRAINING_PRELOAD,
                                  self.credentials.ca_cert if self.tls else None)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.processes["superlink"].poll() is not None:
                raise RuntimeError(f"SuperLink exited:\n{self.log('superlink')[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"SuperLink did not listen on {self.address} within {wait_s:.0f}s")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(["flwr", *args], env=self.env, cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout)

    def node_keys(self, name: str) -> tuple[Path, Path]:
        from .credentials import make_node_keys

        return make_node_keys(self.workdir / "certs", name)

    def register(self, public_key: Path) -> int:
        """``flwr supernode register``: the SuperLink will admit the node holding the matching private key."""
        res = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            return int(json.loads(res.stdout)["node-id"])
        except (ValueError, KeyError):
            raise RuntimeError(f"registering {public_key} failed: {res.stdout}{res.stderr}") from None

    def start_supernode(self, name: str, node_config: dict[str, Any], *, register: bool = True) -> subprocess.Popen:
        """A SuperNode with its own key pair (registered unless ``register=False``)."""
        port = free_port()  # its runtime API, where a SuperExec in process isolation finds it
        cmd = ["flower-supernode", "--superlink", self.address, "--host", "127.0.0.1", "--port", str(port),
               "--node-config", node_config_arg(node_config)]
        if self.tls:
            cmd += ["--root-certificates", str(self.credentials.ca_cert)]
        else:
            cmd.append("--insecure")
        if self.node_auth:
            private, public = self.node_keys(name)
            if register:
                self.register(public)
            cmd += ["--auth-supernode-private-key", str(private)]
        if self.superexec == "flower":  # the SuperNode starts Flower's SuperExec
            return self._spawn(name, cmd)
        node = self._spawn(name, cmd + ["--isolation", "process"])
        if self.node_auth and not register:  # the SuperLink never admits it: nothing will run there
            return node
        preload = () if "worker-socket" in node_config else TRAINING_PRELOAD  # a node that trains in its ClientApp
        self._start_superexec(name, "clientapp", port, node, preload)
        return node

    def _start_superexec(self, name: str, task_type: str, port: int, parent: subprocess.Popen,
                         preload: tuple[str, ...], root_certificates: Path | None = None) -> None:
        """``legendfl flower superexec`` for ``parent`` (a SuperLink or SuperNode in process isolation)."""
        cmd = [sys.executable, "-m", "legendfl", "flower", "superexec", "--task-type", task_type,
               "--runtime-api-address", f"127.0.0.1:{port}", "--parent-pid", str(parent.pid), "--preload", *preload]
        if root_certificates is not None:
            cmd += ["--root-certificates", str(root_certificates)]
        self._spawn(f"{name}-superexec", cmd)

    def start_workers(self, names: list[str]) -> list[str]:
        """Long-lived ``legendfl flower worker`` processes, one per SuperNode, started side by side (each imports
        torch: seconds); returns their socket paths once all listen."""
        sockets = [str(self.workdir / f"{name}.sock") for name in names]
        for name, socket_path in zip(names, sockets):
            self._spawn(name, [sys.executable, "-m", "legendfl", "flower", "worker", "--socket", socket_path])
        deadline = time.monotonic() + 60
        for name, socket_path in zip(names, sockets):
            while not Path(socket_path).exists():
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"worker {name} exited:\n{self.log(name)[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} did not listen on {socket_path} within 60s")
                time.sleep(0.2)
        return sockets

    def run(self, app_dir: Path, run_config: dict[str, Any], timeout: float,
            on_line: Callable[[str], None] | None = None) -> tuple[str, str]:
        """``flwr run`` the app with these run-config values and wait for it to end (at most ``timeout`` s).

        The run's log is streamed to ``on_line`` as it comes. Returns the run's final status as the SuperLink
        reports it (e.g. ``finished:completed``) and the log. ``flwr run --stream`` exits 0 even when the
        ServerApp failed, so the status is read back from the SuperLink.
        """
        path = self.workdir / "run-config.toml"
        path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
        cmd = ["flwr", "run", str(app_dir), CONNECTION, "--run-config", str(path), "--stream"]
        lines: list[str] = []
        proc = subprocess.Popen(cmd, env=self.env, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

        def pump() -> None:
            for line in proc.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            lines.append(f"flwr run did not end within {timeout:.0f}s; stopped\n")
        reader.join(5)
        output = "".join(lines)
        run_id = next((line.split()[-1] for line in output.splitlines() if "Successfully started run" in line), None)
        if run_id is None:
            return "not started", output
        listed = self.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
        try:
            return str(json.loads(listed.stdout)["runs"][0]["status"]), output
        except (ValueError, KeyError, IndexError):
            return f"unknown ({listed.stdout.strip()}{listed.stderr.strip()})", output


def run_local(config: Path | None, nodes: int, out: Path, *, options: str = "", workers: bool = False,
              emulate_time_scale: float | None = None, timeout_s: float = 3600.0, superexec: str = "flower") -> str:
    """``legendfl flower local``: start a TLS + node-auth federation of ``nodes`` SuperNodes on 127.0.0.1,
    run the app once, stop everything by PID; returns the run's final status."""
    from .server_app import FederationSettings

    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    out = out.resolve()
    settings = FederationSettings(config_file=str(config.resolve()) if config else "", options=options,
                                  out_dir=str(out / "run"))
    cfg = settings.run_config()  # validates the options before anything starts
    if "num_devices" in tomllib.loads(options):
        if cfg.num_devices != nodes:
            raise ValueError(f"num_devices in options ({cfg.num_devices}) must equal nodes ({nodes})")
    else:  # one device per SuperNode, whatever the config file says
        settings = dataclasses.replace(settings, options=f"{options}\nnum_devices = {nodes}")
    app_dir = APP_DIR
    if not (app_dir / "pyproject.toml").exists():
        raise ValueError(f"the Flower app folder {app_dir} is missing from the installed package")
    with LocalFederation(out / "federation", superexec=superexec) as fed:
        sockets = fed.start_workers([f"worker-{i}" for i in range(nodes)]) if workers else []
        for i in range(nodes):
            node_config: dict[str, Any] = {"partition-id": i, "num-partitions": nodes}
            if workers:
                node_config["worker-socket"] = sockets[i]
            if emulate_time_scale is not None:
                node_config.update({"emulate-device": i, "emulate-time-scale": emulate_time_scale})
            fed.start_supernode(f"node-{i}", node_config)
        log.info("SuperLink %s (TLS, node auth) with %d SuperNodes; logs in %s", fed.address, nodes, fed.workdir)
        run_config = {"config-file": settings.config_file, "options": settings.options, "out-dir": settings.out_dir}
        status, _ = fed.run(app_dir, run_config, timeout=timeout_s, on_line=log.info)
        log.info("run %s; %s records in %s", status, cfg.strategy, settings.out_dir)
        return status
