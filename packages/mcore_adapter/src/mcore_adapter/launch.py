"""Run a function on N local ranks, torchrun-style (``RANK``/``WORLD_SIZE``/``MASTER_*``
environment, gloo on CPU), and collect what each rank returns.

``verify --tp/--pp`` and the distributed tests use it, so a user needs no launcher of their
own. ``fn`` must be importable by module path (spawned processes import it afresh).
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch
    import torch.distributed as dist

    # Ranks share the machine's cores: one thread each avoids oversubscription.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        result = fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    with open(Path(out) / f"{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def launch(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` ranks; returns each rank's result, by rank. A rank's
    exception is raised here with its traceback."""
    with tempfile.TemporaryDirectory(prefix="mcore-adapter-launch-") as out:
        mp.start_processes(
            _entry,
            args=(fn, world_size, _free_port(), out, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        results = []
        for rank in range(world_size):
            with open(Path(out) / f"{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
        return results
