"""Starting real competing processes for the race, crash and fencing tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


def spawn_workers(modes: list[str], campaign_id: int, env: dict[str, str],
                  delay: float = 0.3) -> list[subprocess.Popen]:
    """Start one worker per mode; return once all are ready, released at one instant."""
    procs = [subprocess.Popen([sys.executable, str(WORKER), mode, str(campaign_id)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for mode in modes]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", "worker failed to start"
    start_at = f"{time.time() + delay}\n"
    for proc in procs:
        proc.stdin.write(start_at)
        proc.stdin.flush()
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    """Wait for every worker, insist each exited cleanly; return what each printed."""
    outputs = []
    for proc in procs:
        out = proc.communicate(timeout=timeout)[0]
        assert proc.returncode == 0, f"worker {proc.pid} exited {proc.returncode}"
        outputs.append(out)
    return outputs


def reap(proc: subprocess.Popen, timeout: float = 120) -> int:
    """Wait for a worker (so its pid is really gone) and close its pipes."""
    proc.communicate(timeout=timeout)
    return proc.returncode


def wait_for(predicate, timeout: float = 30, step: float = 0.05):
    """Poll until predicate() is truthy; fail the test on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")
