"""Run `gepa-trace collect` as a real subprocess on free loopback ports (test helper)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

_LISTENING = re.compile(r"listening http=[^:]+:(\d+)(?: grpc=[^:]+:(\d+))?")


class CollectorProcess:
    """`gepa-trace collect --http-port 0 --grpc-port 0 ...`; ports parsed from stderr."""

    def __init__(self, store_url: str, *extra: str, timeout: float = 60):
        command = [sys.executable, "-c", "from gepa_trace.cli import main; main()",
                   "collect", "--store", store_url, "--http-port", "0", "--grpc-port", "0",
                   *extra]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match:
                self.http_port = int(match.group(1))
                self.grpc_port = int(match.group(2)) if match.group(2) else None
                return
        self.proc.kill()
        raise RuntimeError("collector did not start: " + "".join(self.lines)
                           + (self.proc.stderr.read() or ""))

    def terminate(self, timeout: float = 60) -> tuple[int, str]:
        """SIGTERM, then wait; returns (exit code, the rest of stderr)."""
        self.proc.terminate()
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)
