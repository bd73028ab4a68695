"""Fixtures of the epd package tests: a real `epd` daemon per test and worker processes.

The daemon binary is $EPD_DAEMON (ctest sets it), else <build>/daemon/epd with
<build> = $EPD_BUILD_DIR or <repo>/build. Each daemon gets its own runtime
directory and socket, reports readiness as READY=1 on a NOTIFY_SOCKET the
fixture binds (no sleeps), and is ended by its pid (SIGTERM, then SIGKILL at a
deadline). Worker processes are started with subprocess and ended by pid.
Under ctest, EPD_PYTEST_SKIP_RC (77) is the exit status of a session in which
every test was skipped and none failed, so ctest reports it as skipped.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10


def require_torch_ops(engine: str = "", package: str = "", pin: str = ""):
    """torch, for a test module that needs the epd torch ops (and `package`, the engine
    named `engine`, when given): else a module-level skip that says what is missing."""
    try:
        import torch
    except ImportError as e:  # not installed, or installed without its libraries
        pytest.skip(f"torch is not importable ({e}); the torch-op tests need it (python/requirements-test.txt)",
                    allow_module_level=True)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{engine} is not installed: pip install -r python/requirements-test.txt ({pin} --no-deps "
                    "and its listed dependencies)", allow_module_level=True)
    import epd
    if not epd.ops.available():
        pytest.skip(f"the epd torch ops extension is not available: {epd.ops.load_error()}", allow_module_level=True)
    return torch


def build_dir() -> Path:
    return Path(os.environ.get("EPD_BUILD_DIR") or REPO / "build")


def tool_path(env: str, rel: str) -> str:
    p = os.environ.get(env) or str(build_dir() / rel)
    if not os.access(p, os.X_OK):
        pytest.fail(f"{p} is not an executable (set {env} or EPD_BUILD_DIR, or build the project)")
    return p


class Daemon:
    """A running epd: .socket, .pid, .dir, .log_path."""

    def __init__(self, binary: str, extra=()):
        self.dir = tempfile.mkdtemp(prefix="epd-pytest.")
        self.socket = os.path.join(self.dir, "epd.sock")
        self.log_path = os.path.join(self.dir, "epd.log")
        notify_path = os.path.join(self.dir, "notify.sock")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        argv = [binary, "--config", "", "--socket", self.socket, "--log-target", "stderr", *extra]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            self._notify.settimeout(min(left, 0.5))
            try:
                msg = self._notify.recv(4096).decode(errors="replace")
            except socket.timeout:
                if self.proc.poll() is not None:
                    break
                continue
            if "READY=1" in msg:
                return
        self.stop()
        raise RuntimeError(f"epd did not report READY=1 within {READY_TIMEOUT_S} s (exit status "
                           f"{self.proc.returncode}); log:\n{self.log()}")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM by pid, SIGKILL after STOP_TIMEOUT_S; returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._notify.close()
        return self.proc.returncode


@pytest.fixture
def daemon():
    d = Daemon(tool_path("EPD_DAEMON", "daemon/epd"))
    try:
        yield d
    finally:
        rc = d.stop()
        for f in ("epd.sock", "notify.sock", "epd.log"):
            try:
                os.unlink(os.path.join(d.dir, f))
            except OSError:
                pass
        try:
            os.rmdir(d.dir)
        except OSError:
            pass
        assert rc == 0, f"epd exited with {rc} on SIGTERM; log:\n{d.log()}"


def run_workers(argvs, timeout_s: float, env=None):
    """Starts one process per argv, waits for all within timeout_s (then SIGKILLs the rest by pid).
    Returns [(returncode, output)]."""
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for a in argvs]
    deadline = time.monotonic() + timeout_s
    out = []
    for p in procs:
        try:
            data, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            out.append((p.returncode, data.decode(errors="replace")))
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            data, _ = p.communicate()
            out.append((None, data.decode(errors="replace") + f"\n(killed: past the {timeout_s} s deadline)"))
    return out


def pytest_sessionfinish(session, exitstatus):
    rc = os.environ.get("EPD_PYTEST_SKIP_RC")
    # 0, or 5 (no test collected) when a module-level skip removed every test
    if not rc or exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    passed = len(reporter.stats.get("passed", []))
    skipped = len(reporter.stats.get("skipped", []))
    failed = len(reporter.stats.get("failed", [])) + len(reporter.stats.get("error", []))
    if passed == 0 and failed == 0 and skipped > 0:
        session.exitstatus = int(rc)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU and an epd built with CUDA")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
