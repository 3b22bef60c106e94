"""Shared pieces of the benchmark scripts: machine description, process-tree memory, result files.

Convention (SPEC.md): ``benchmarks/<name>.py`` writes ``benchmarks/results/<name>.json`` with
``summary`` (the headline figures its issue names; null where not measurable), ``machine``,
``params`` and raw ``runs``.
"""

from __future__ import annotations

import json
import os
import platform as _stdlib_platform  # the stdlib module (our source folder is not a package)
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    info = {
        "cores": os.cpu_count(),
        "memory_gib": None,
        "cpu": None,
        "gpu": None,
        "python": sys.version.split()[0],
        "platform": _stdlib_platform.platform(),
        "versions": {},
    }
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        info["gpu"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    for pkg in ("seqrec", "ray", "pyarrow", "numpy", "numba", "pandas", "torch", "faiss-cpu"):
        try:
            info["versions"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info["versions"][pkg] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        info["git_commit"] = None
    return info


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except (OSError, ValueError):
        pass
    return rss, pss


class TreeMemory:
    """Samples the summed RSS and PSS of a process and all its descendants (Ray's raylet and workers
    included when the process started a local Ray instance) and keeps the peaks. Linux only."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.pid, self.interval_s = pid, interval_s
        self.peak_rss_kib = self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            for p in _tree(self.pid):
                r, s = _mem_kib(p)
                rss, pss = rss + r, pss + s
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Run a command; return wall seconds, exit code, output tail and peak tree memory (GiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    with TreeMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    return {
        "cmd": " ".join(cmd),
        "returncode": proc.returncode,
        "wall_s": round(wall, 3),
        "peak_rss_gib": round(mem.peak_rss_kib / 2**20, 3),
        "peak_pss_gib": round(mem.peak_pss_kib / 2**20, 3),
        "output_tail": out[-3000:],
    }


def write_result(name: str, summary: dict, params: dict, runs: list, machine: dict | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"summary": summary, "machine": machine or machine_info(), "params": params, "runs": runs,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(doc, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return path
