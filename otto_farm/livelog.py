"""A running task's output, live: what its setup, agent and verify commands print, as they print it.

The job hands each command a tee (shell.Tee) that appends bounded, redacted chunks to a capped Redis
stream per (run, task) with a time to live; `otto-farm logs -f` reads it on any machine. It is a view
for people: a store that cannot take a chunk loses that chunk, never the job.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel

from otto_farm import keys, redact, shell
from otto_farm.store import Store

LiveSource = Literal["setup", "agent", "verify"]


class LiveChunk(BaseModel):
    """A piece of what a running job's command printed, as its task's live stream holds it."""

    run: int  # the task's run number
    source: LiveSource
    attempt: int  # 0 for setup
    text: str


CHUNK_CHARS = 4_000  # of one call's output; a chatty command's middle is left out of the live view
MAXLEN = 1_000  # chunks kept per task: a few MB at most
TTL_S = 3600  # after its last chunk: the stored result is the record, this is only a view


class LiveLog:
    """The live output of one run of one task: `tee(source, attempt)` for each command it runs, in turn."""

    def __init__(self, store: Store, run_id: str, key: str, run_no: int) -> None:
        self.store, self.name, self.run_no = store, keys.live_key(run_id, key), run_no
        self._held = ""  # what may be the start of a secret: sent with what follows it
        self._source: tuple[LiveSource, int] = ("setup", 0)

    def tee(self, source: LiveSource, attempt: int = 0) -> shell.Tee:
        self.close()  # the last command's held-back end goes out first, under its own name
        self._source = (source, attempt)
        return self._write

    def _write(self, text: str) -> None:
        # Cleaned, then the end that could be a secret's head is held back: a secret split across two
        # of the command's writes is never sent in pieces that no longer match it.
        redactor = redact.redactor()
        clean = redactor.clean(self._held + text)
        keep = _secret_head(clean, redactor.secrets)
        self._held = clean[len(clean) - keep :]
        self._send(clean[: len(clean) - keep])

    def close(self) -> None:
        """Send what was held back: the command has ended, no more of a secret can follow."""
        held, self._held = self._held, ""
        self._send(held)

    def _send(self, text: str) -> None:
        if not text:
            return
        if len(text) > CHUNK_CHARS:
            text = f"[... {len(text) - CHUNK_CHARS} chars not shown live ...]\n" + text[-CHUNK_CHARS:]
        source, attempt = self._source
        chunk = LiveChunk(run=self.run_no, source=source, attempt=attempt, text=text)
        fields: Any = {k: str(v) for k, v in chunk.model_dump().items()}
        # A view for people: the job goes on without it, and its result is stored whole.
        with contextlib.suppress(redis.RedisError), self.store.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.name, fields, maxlen=MAXLEN, approximate=True)
            pipe.expire(self.name, TTL_S)
            pipe.execute()


def read(
    store: Store, run_id: str, key: str, after: str = "0", block_ms: int | None = None
) -> tuple[str, list[LiveChunk]]:
    """The task's live chunks after the stream id `after`, and the id to read on from; with `block_ms`,
    wait that long for the first new one."""
    reply = cast(list[Any], store.redis.xread({keys.live_key(run_id, key): after}, block=block_ms))
    entries = [(eid, data) for _, batch in reply or () for eid, data in batch]
    return (entries[-1][0] if entries else after), [LiveChunk.model_validate(d) for _, d in entries]


def _secret_head(text: str, secrets: list[str]) -> int:
    """The length of the longest end of `text` that is the start of a secret, and not all of it."""
    firsts = {s[0] for s in secrets}
    for n in range(min(len(text), max((len(s) for s in secrets), default=1) - 1), 0, -1):
        if text[-n] in firsts and any(len(s) > n and s.startswith(text[-n:]) for s in secrets):
            return n
    return 0
