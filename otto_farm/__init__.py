"""otto-farm: many coding-agent tasks against one git repository, spread over Celery workers."""

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
