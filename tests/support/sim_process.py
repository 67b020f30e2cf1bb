"""`aitn sensor sim` as its own process, for tests that need a live sensor link."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Sim:
    """`aitn sensor sim` as its own process; `line` is the first line it printed."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "sensor", "sim", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        assert ready, "the simulator printed nothing"
        self.line = self.proc.stdout.readline().strip()

    @property
    def port(self) -> int:
        return int(self.line.rsplit(":", 1)[1])

    def finish(self, timeout: float = 10) -> dict:
        """Wait for exit 0 and return its summary (the JSON line on stderr)."""
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(err.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
