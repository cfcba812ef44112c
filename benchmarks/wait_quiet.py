"""Wait until the machine is quiet, then run a command (for timings on a shared machine).

Quiet = the other processes together kept at most --max-busy CPUs busy over the last --window
seconds (Linux /proc/stat). On a 2-core machine one other busy process makes a 2-thread PyTorch
run several times slower (its OpenMP threads wait for each other), so timings are only worth
recording when it is quiet. Example:

    python benchmarks/wait_quiet.py --max-busy 0.2 -- ratlip bench cub --hidden 0,64 --batch-sizes 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def busy_cpus(window: float) -> float:
    """CPUs busy (all processes) on average over `window` seconds."""

    def read() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]) - idle, sum(fields[:8])

    b0, _ = read()
    time.sleep(window)
    b1, _ = read()
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / window


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-busy", type=float, default=0.2, help="CPUs other processes may use (default 0.2)")
    p.add_argument("--window", type=float, default=10.0, help="seconds of quiet to wait for (default 10)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default 3600)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    a = p.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("give the command to run after --")
    start = time.time()
    while True:
        busy = busy_cpus(a.window)
        if busy <= a.max_busy:
            break
        if time.time() - start > a.timeout:
            print(f"wait_quiet: still busy ({busy:.2f} CPUs) after {a.timeout:.0f} s; giving up", file=sys.stderr)
            return 3
    print(f"wait_quiet: {busy:.2f} CPUs busy over {a.window:.0f} s; load average {os.getloadavg()[0]:.2f}; running",
          file=sys.stderr, flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
