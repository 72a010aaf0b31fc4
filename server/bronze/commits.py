"""Which Kafka offsets are in Bronze, read back from Bronze itself.

A *flush* writes the rows of a set of offset ranges, one `[first, end)` per
topic-partition, as one file per (table, day). It is recorded in two small
objects under `<uri>/_bronze/`:

    pending/<flush>.json    written before any file: the ranges and every file's key
    commits/<flush>.json    written after the last file is durable: the same, now done

A flush is in Bronze once its commit marker exists; nothing else counts. So
after a crash:
  - a pending marker with a commit marker is only tidied away;
  - a pending marker without one is a flush cut short (some days written,
    others not): its files are deleted and its offsets, which no commit
    covers, are consumed and written again, whole.
Where a worker resumes a partition is the largest `end` of any commit marker
that covers it, so any worker on any machine can take a partition over with
no state of its own. Every 64 markers are folded into a checkpoint (the
largest `end` per partition) so resuming reads a few objects, not one per
flush since the beginning.

Files of a flush cut short are visible to dataset readers from their upload
to the recovery that deletes them; readers that must never see them read the
files the commit markers list.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from keystone_ingest.server.bronze.storage import ObjectStore
from keystone_ingest.server.errors import SinkFailed

ROOT = "_bronze"
PENDING = f"{ROOT}/pending"
COMMITS = f"{ROOT}/commits"
CHECKPOINT_PREFIX = "checkpoint-"
FOLD_AFTER = 64
"""Commit markers beyond which a worker folds them into one checkpoint."""

TopicPartition = tuple[str, int]


def new_flush_id() -> str:
    """Sorts by time (UTC, to the second), unique across workers."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:12]


@dataclass
class Flush:
    id: str
    ranges: dict[TopicPartition, tuple[int, int]]
    """[first, end) offsets per topic-partition."""
    files: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        ranges: dict[str, dict[str, list[int]]] = {}
        for (topic, partition), (first, end) in sorted(self.ranges.items()):
            ranges.setdefault(topic, {})[str(partition)] = [first, end]
        return json.dumps({"flush": self.id, "ranges": ranges, "files": self.files}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> Flush:
        try:
            doc = json.loads(data)
            ranges = {
                (topic, int(p)): (int(r[0]), int(r[1]))
                for topic, parts in doc["ranges"].items()
                for p, r in parts.items()
            }
            return cls(str(doc.get("flush", "")), ranges, [str(f) for f in doc.get("files", [])])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            # A marker we cannot read may be a commit: guessing would lose or
            # duplicate rows, so the worker stops and says which object it is.
            raise SinkFailed(f"bronze: commit log object {key} is not a valid marker: {exc}") from exc


class CommitLog:
    """The commit markers of one Bronze location. Blocking (call from a thread)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._read: dict[str, Flush] = {}  # commit markers already read, by key

    def progress(self) -> dict[TopicPartition, int]:
        """The end offset, per topic-partition, of what is in Bronze."""
        keys = self.store.list_keys(COMMITS)
        for key in keys:
            if key not in self._read:
                data = self.store.get(key)
                if data is not None:  # folded away by another worker since the listing
                    self._read[key] = Flush.from_json(data, key)
        for key in set(self._read) - set(keys):
            del self._read[key]
        ends: dict[TopicPartition, int] = {}
        for flush in self._read.values():
            for tp, (_, end) in flush.ranges.items():
                ends[tp] = max(ends.get(tp, 0), end)
        return ends

    def recover(self, partitions: Iterable[TopicPartition]) -> list[str]:
        """Deletes the files of flushes cut short that wrote any of
        `partitions` (now ours: whoever began them is gone) and their pending
        markers. Returns the file keys deleted."""
        ours = set(partitions)
        committed = {k.rsplit("/", 1)[1] for k in self.store.list_keys(COMMITS)}
        deleted: list[str] = []
        for key in self.store.list_keys(PENDING):
            name = key.rsplit("/", 1)[1]
            if name in committed:
                self.store.delete(key)  # done; the crash came before the tidying
                continue
            data = self.store.get(key)
            if data is None:
                continue
            flush = Flush.from_json(data, key)
            if not ours & flush.ranges.keys():
                continue  # another worker's, maybe in progress
            self.abandon(flush)
            deleted += flush.files
        return deleted

    def begin(self, flush: Flush) -> None:
        self.store.put(f"{PENDING}/{flush.id}.json", flush.to_json())

    def abandon(self, flush: Flush) -> None:
        """Deletes the files of a flush that will not be committed, then its pending marker."""
        for file_key in flush.files:
            self.store.delete(file_key)
        self.store.delete(f"{PENDING}/{flush.id}.json")

    def commit(self, flush: Flush) -> None:
        key = f"{COMMITS}/{flush.id}.json"
        self.store.put(key, flush.to_json())
        self._read[key] = flush
        self.store.delete(f"{PENDING}/{flush.id}.json")

    def fold(self) -> bool:
        """Folds the commit markers read so far into one checkpoint once
        there are more than FOLD_AFTER. Safe beside other workers: it deletes
        only markers whose ranges the checkpoint holds."""
        if len(self._read) <= FOLD_AFTER:
            return False
        folded = dict(self._read)
        ends: dict[TopicPartition, tuple[int, int]] = {}
        for flush in folded.values():
            for tp, (_, end) in flush.ranges.items():
                if tp not in ends or end > ends[tp][1]:
                    ends[tp] = (0, end)
        checkpoint = Flush(CHECKPOINT_PREFIX + new_flush_id(), ends)
        key = f"{COMMITS}/{checkpoint.id}.json"
        self.store.put(key, checkpoint.to_json())
        self._read[key] = checkpoint
        for old in folded:
            self.store.delete(old)
            del self._read[old]
        return True
