"""Run a function on N local ranks, torchrun-style (``RANK``/``WORLD_SIZE``/``MASTER_*``
environment, gloo on CPU), and collect what each rank returns.

``verify --tp/--pp`` and the distributed tests use it, so a user needs no launcher of their
own. ``fn`` must be importable by module path (spawned processes import it afresh).

A rank that fails on bad input (a ``UserError``) stops the job, and that one error is raised
here, as if the function had run in this process: the user reads one ``error:`` line, not a
traceback per rank.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException


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

    from .models.converter.errors import UserError
    from .plugins import import_modules

    # Ranks share the machine's cores: one thread each avoids oversubscription.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        import_modules()  # what the launching command imported (--import), as it did
        result = fn(*args)
    except UserError as e:
        with open(Path(out) / f"{rank}.error.pkl", "wb") as f:
            pickle.dump(e, f)
        sys.exit(2)  # not an exception: torch would pickle its traceback for the parent to print
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    with open(Path(out) / f"{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def launch(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` ranks; returns each rank's result, by rank. A rank's
    exception is raised here with its traceback."""
    with tempfile.TemporaryDirectory(prefix="mcore-adapter-launch-") as out:
        try:
            mp.start_processes(
                _entry,
                args=(fn, world_size, _free_port(), out, args),
                nprocs=world_size,
                join=True,
                start_method="spawn",
            )
        except ProcessException:
            errors = sorted(Path(out).glob("*.error.pkl"), key=lambda p: int(p.name.split(".")[0]))
            if not errors:
                raise
            with open(errors[0], "rb") as f:
                raise pickle.load(f) from None
        results = []
        for rank in range(world_size):
            with open(Path(out) / f"{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
        return results
