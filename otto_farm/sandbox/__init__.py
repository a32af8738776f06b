"""Sandboxes behind one protocol, looked up by the task set's `sandbox.kind`: `bwrap` (bubblewrap's
namespaces), `docker` (a container per worktree slot), `none` (the worker's own view), `auto` (bwrap
where it works, else none with a warning; never docker)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from otto_farm.models import SandboxConfig
from otto_farm.sandbox import bwrap
from otto_farm.sandbox.base import Command, Sandbox, SandboxUnavailable, Walls
from otto_farm.sandbox.bwrap import Bwrap
from otto_farm.sandbox.docker import Docker, remove_containers
from otto_farm.sandbox.none import NoSandbox

logger = logging.getLogger(__name__)


def resolved_kind(config: SandboxConfig) -> str:
    """The kind a job gets on this worker: `auto` becomes bwrap where it works, else none."""
    if config.kind != "auto":
        return config.kind
    return "bwrap" if bwrap.unavailable() is None else "none"


def get_sandbox(config: SandboxConfig, walls: Walls, lock_fds: Sequence[int] = ()) -> Sandbox:
    """The sandbox a job's commands run in; raises SandboxUnavailable for a kind this worker lacks."""
    if config.kind == "docker":
        assert config.image is not None  # the model requires one
        box = Docker(walls, config.image, network=config.network, memory_mb=config.memory_mb)
        return box.start()  # the slot's container, cleared of whatever a previous job left running
    limits = ["prlimit", f"--data={config.memory_mb * 2**20}"] if config.memory_mb else []
    kind = resolved_kind(config)
    if kind == "bwrap":
        if (why := bwrap.unavailable()) is not None:
            raise SandboxUnavailable(f"sandbox bwrap: {why}")
        return Bwrap(walls, network=config.network, limits=limits)
    if config.kind == "auto":
        _warn_unsandboxed()
    return NoSandbox(walls, prefix=limits, lock_fds=lock_fds)


def describe() -> str:
    """One line for a worker's start: the sandbox `auto` gives task commands here."""
    why = bwrap.unavailable()
    if why is None:
        return f"sandbox: bwrap ({bwrap.version()}): task commands run contained"
    return f"sandbox: none ({why}): task commands run UNSANDBOXED as this worker's user"


@functools.cache  # once per process
def _warn_unsandboxed() -> None:
    logger.warning("%s", describe())


__all__ = [
    "Command",
    "Sandbox",
    "SandboxUnavailable",
    "Walls",
    "describe",
    "get_sandbox",
    "remove_containers",
    "resolved_kind",
]
