"""Run ``tessera operator`` as a real subprocess against the test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

from prometheus_server import free_port, scrape_sample

ROOT = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """One operator process; logs go to ``log_path``."""

    def __init__(self, kubeconfig: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        #: /metrics port (a free one unless the test sets --metrics-port; 0: none)
        self.metrics_port = free_port()
        for i, arg in enumerate(args):
            if arg == "--metrics-port" and i + 1 < len(args):
                self.metrics_port = int(args[i + 1])
            elif arg.startswith("--metrics-port="):
                self.metrics_port = int(arg.split("=", 1)[1])

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera", "operator", "--kubeconfig", str(self.kubeconfig),
             "--metrics-port", str(self.metrics_port), "--interval-seconds", "0.5", "--lease-duration-seconds", "3",
             "--log-level", "INFO", *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, the Lease stays held until it expires."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            time.sleep(0.1)
        raise AssertionError(f"operator did not exit within {timeout}s:\n{self.log()[-3000:]}")

    def cycles(self) -> float:
        """Scheduling cycles this operator has completed (tessera_scheduling_cycles_total)."""
        assert self.metrics_port, "started with --metrics-port 0: no cycle counter"
        return scrape_sample(self.metrics_port, "tessera_scheduling_cycles_total")

    def wait_cycles(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` more cycles have completed: a negative check ("nothing
        happened") waits on this observable, never on a sleep."""
        target = self.cycles() + count
        deadline = time.monotonic() + timeout
        while self.cycles() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator did not complete {count} cycles within {timeout}s")
            time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Poller:
    """A background thread calling :meth:`sample` until the ``with`` block ends (watchers
    that check an invariant at every moment of a test, not just at its end)."""

    def __init__(self) -> None:
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self.samples += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def clean_up(cluster: Any, namespace: str, plural: str, started: list[OperatorProcess]) -> None:
    """Delete the test's workloads of ``plural``, wait for their pods to go, then stop the
    operators and print their logs (pytest shows them when the test failed)."""
    cluster.kubectl("delete", plural, "--all", "-n", namespace, "--wait=false", check=False)
    try:
        cluster.wait_for(lambda: not cluster.get_json("pods", "-n", namespace)["items"], timeout=40,
                         what="pods of the test removed")
    finally:
        for proc in started:
            proc.stop()
            print(f"----- {proc.log_path.name}\n{proc.log()[-8000:]}")
