"""aiokafka's reconnect errors, rate-limited: the sink reports outages itself."""

from __future__ import annotations

import logging
import time


class RateLimitedLogs(logging.Filter):
    """aiokafka logs every failed reconnect at ERROR, ten times a second per
    broker during an outage; the sink reports the outage itself. Lets one record
    per logger and message template through every `interval_s` and puts the
    number held back in the next one's `suppressed` field."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[tuple[str, object], list[float | int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = (record.name, record.msg)
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.interval_s:
            if seen is not None and seen[1]:
                record.suppressed = seen[1]
            self._seen[key] = [now, 0]
            if len(self._seen) > 1000:  # templates are few; this only guards against surprises
                self._seen.clear()
            return True
        seen[1] += 1
        return False


AIOKAFKA_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.producer.sender", "aiokafka.producer.producer")
AIOKAFKA_LOG_FILTER = RateLimitedLogs()
