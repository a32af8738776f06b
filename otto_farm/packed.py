"""Many small JSON values in few hash fields, compressed: how a run's task states and batches lie in Redis.

Redis keeps a hash field at about 60 bytes beside its value, and a task's state is about 40: stored
one a field, 10,000 tasks' states took 1 MiB. Here a field is a *bucket* of values, its ids and JSON
values in lines (`pack`) compressed with zlib and base64'd (the store's client reads text). A task's bucket is
its place in the run's task set over TASKS_PER_BUCKET (`task_bucket`), a batch's its index over
BATCHES_PER_BUCKET (`batch_bucket`): a reader of one value reads one
bucket, a few dozen values, however big the run; a writer rewrites the buckets it changed, whole
(`Buckets.writes`), under the store's WATCH.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

TASKS_PER_BUCKET = 64
BATCHES_PER_BUCKET = 16
LEVEL = 1  # zlib's fastest: level 6 packs these lines about a tenth smaller, at twice the time


def task_bucket(key: str, places: Mapping[str, int]) -> str:
    """A task's bucket, by its place in the run's stored task set (`places`), so that a batch's tasks,
    often neighbours there, share few buckets; a task the pilot added, by a CRC of its key over the
    same places (not Python's hash(): every process must find it in the same bucket)."""
    place = places.get(key)
    if place is None:
        place = zlib.crc32(key.encode()) % max(len(places), 1)
    return str(place // TASKS_PER_BUCKET)


def task_buckets(places: Mapping[str, int]) -> int:
    return -(-len(places) // TASKS_PER_BUCKET)


def batch_bucket(index: int) -> str:
    return str(index // BATCHES_PER_BUCKET)


def squeeze(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode(), LEVEL)).decode("ascii")


def unsqueeze(raw: str) -> str:
    return zlib.decompress(base64.b64decode(raw)).decode()


def pack(values: Mapping[str, str]) -> str:
    """The ids on the first line, tab-separated, then a value a line: ids hold no tab or newline (task
    keys and batch indexes), JSON text no newline; and a reader splits with two calls, not one a value."""
    return squeeze("\t".join(values) + "\n" + "\n".join(values.values()))


def unpack(raw: str) -> dict[str, str]:
    ids, _, values = unsqueeze(raw).partition("\n")
    return dict(zip(ids.split("\t"), values.split("\n"), strict=True))


@dataclass
class Buckets:
    """A packed hash's buckets as one read found them: the values of those it read, whether it read
    them all, and from which number on (`absent`) buckets did not exist, so that a write may start one."""

    read: dict[str, dict[str, str]] = field(default_factory=dict)
    whole: bool = True
    absent: int = 0

    @classmethod
    def of(cls, raws: Mapping[str, str | None], whole: bool, absent: int = 0) -> Buckets:
        return cls({b: unpack(raw) for b, raw in raws.items() if raw is not None}, whole, absent)

    def values(self) -> dict[str, str]:
        return {k: v for bucket in self.read.values() for k, v in bucket.items()}

    def unread(self, ids: list[str], bucket_of: Callable[[str], str]) -> bool:
        """Whether writing these ids needs a bucket this read did not bring."""
        return not self.whole and any(
            (b := bucket_of(i)) not in self.read and int(b) < self.absent for i in ids
        )

    def writes(self, changed: Mapping[str, str], bucket_of: Callable[[str], str]) -> dict[str, str]:
        """The buckets holding these changed values, each with the rest it holds, packed."""
        touched: dict[str, dict[str, str]] = {}
        for key, value in changed.items():
            bucket = bucket_of(key)
            if bucket not in touched:
                touched[bucket] = dict(self.read.get(bucket, {}))
            touched[bucket][key] = value
        return {b: pack(values) for b, values in touched.items()}
