"""otto-farm: many coding-agent tasks against one git repository, spread over Celery workers.

The public names load on first use (PEP 562): importing any otto_farm module, as the CLI does for
`--help`, does not pay for pydantic models, Redis and git helpers it may not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otto_farm.errors import GitError, InfrastructureError, InputError, OttoFarmError
    from otto_farm.models import (
        Decision,
        RunRecord,
        RunStatus,
        TaskResult,
        TaskSet,
        TaskSpec,
        TaskState,
        TaskStatus,
    )
    from otto_farm.plan import batches, replan
    from otto_farm.settings import Settings
    from otto_farm.store import Store
    from otto_farm.taskset import LoadedTaskSet, load

__all__ = [
    "Decision",
    "GitError",
    "InfrastructureError",
    "InputError",
    "LoadedTaskSet",
    "OttoFarmError",
    "RunRecord",
    "RunStatus",
    "Settings",
    "Store",
    "TaskResult",
    "TaskSet",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "batches",
    "load",
    "replan",
]
# where each public name lives, under otto_farm
_HOME = dict.fromkeys(("GitError", "InfrastructureError", "InputError", "OttoFarmError"), "errors") | {
    "LoadedTaskSet": "taskset",
    "load": "taskset",
    "batches": "plan",
    "replan": "plan",
    "Settings": "settings",
    "Store": "store",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"otto_farm.{_HOME.get(name, 'models')}"), name)
