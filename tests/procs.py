"""Run ``rtis serve`` as a real subprocess for tests about processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

LISTEN_RE = re.compile(r"rtis listening on (http://\S+)")


class Server:
    """A running ``rtis serve``; ``url`` is its base URL."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        repo = str(Path(__file__).resolve().parent.parent)  # so tests.userfuncs imports
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": repo}
        self.log_path = cwd / f"server-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtis.cli", "serve", "--port", "0", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = LISTEN_RE.search(line)
            if m:
                return m.group(1)
        self.proc.kill()
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._release()

    def _release(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._release()
        return code
