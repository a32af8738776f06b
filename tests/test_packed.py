"""packed.py: values round-trip through a bucket whatever their text, and a window knows which buckets
it may write."""

from __future__ import annotations

import json

from otto_farm import packed


def test_a_bucket_gives_back_every_value_as_it_was():
    values = {
        "t1": json.dumps({"reason": "line one\nline two\ttabbed"}),  # JSON escapes both
        "t2": json.dumps({"guidance": "naïve \u2028 separator \u0085 next line"}, ensure_ascii=False),
        "t3": "{}",
        "9": json.dumps({"context": ["é" * 3000]}),
    }
    raw = packed.pack(values)
    assert raw.isascii() and packed.unpack(raw) == values
    assert len(raw) < len("".join(values.values())) // 4  # compressed: 3,000 alike characters


def test_a_task_lies_with_its_neighbours_and_an_added_one_within_the_same_buckets():
    places = {f"t{i}": i for i in range(3 * packed.TASKS_PER_BUCKET)}
    assert packed.task_bucket("t0", places) == packed.task_bucket(f"t{packed.TASKS_PER_BUCKET - 1}", places)
    assert packed.task_bucket(f"t{packed.TASKS_PER_BUCKET}", places) == "1"
    assert packed.task_bucket("fix-t3", places) in {"0", "1", "2"}
    assert packed.task_bucket("fix-t3", places) == packed.task_bucket("fix-t3", dict(places))
    assert packed.task_buckets(places) == 3


def test_a_window_may_write_the_buckets_it_read_and_new_ones_only():
    read = packed.Buckets.of({"1": packed.pack({"20": "{}"})}, whole=False, absent=3)
    bucket_of = packed.batch_bucket
    assert not read.unread(["20", "21"], lambda i: bucket_of(int(i)))  # bucket 1: read
    assert not read.unread(["48"], lambda i: bucket_of(int(i)))  # bucket 3: did not exist
    assert read.unread(["5"], lambda i: bucket_of(int(i)))  # bucket 0: exists, not read
    writes = read.writes({"21": '{"index":21}'}, lambda i: bucket_of(int(i)))
    assert packed.unpack(writes["1"]) == {"20": "{}", "21": '{"index":21}'}  # the rest kept
