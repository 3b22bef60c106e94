"""Starting or joining the Ray cluster a seqrec command runs on."""

from __future__ import annotations

import os


def start_ray(workers: int) -> None:
    """Connect to (or start) Ray for ``workers`` Ray Train workers (0: the loop runs in this process).

    Ray Train frees a run's worker placement group from a cleaner actor that asks the dashboard's
    State API whether the run's controller is alive. Without the dashboard, that cleaner logs a
    failure about once a second for every run (``seqrec evaluate --trainer ray``), and a trial that
    ASHA stops keeps its workers' CPUs forever, so the next trials wait for them (a hang). So a
    cluster this function starts for Ray Train workers runs the dashboard, on a free port named in
    ``RAY_API_SERVER_ADDRESS`` so that the cleaner finds it even beside other Ray clusters.
    """
    import ray

    if ray.is_initialized():
        return
    if workers == 0:
        ray.init(include_dashboard=False, logging_level="WARNING")
        return
    port = free_port()
    os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, logging_level="WARNING")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
