"""The dedup window: which orders count as duplicates, within a batch and across
batches, and how keys leave the window (capacity, age, forget)."""

from __future__ import annotations

import time

from batches import NOW_MS, batch_bytes, field_len, field_varint, process, rows, valid_order
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core
from keystone_ingest.proto.v1 import ingest_pb2

from benchmarks.reference.core import ReferenceCore


def counts(result) -> tuple[int, int, int]:
    return result.accepted, result.duplicates, result.rejected


def accepted_order_ids(result) -> list[str]:
    return [row["order_id"] for row in rows(result.orders)]


def test_repeat_inside_one_batch_is_a_duplicate_and_the_first_occurrence_wins():
    first = valid_order(1)
    resent = valid_order(2)
    resent.event_id = first.event_id  # same key, different content
    result = process(first, valid_order(3), resent)
    assert counts(result) == (2, 1, 0)
    assert accepted_order_ids(result) == ["order-1", "order-3"]
    assert rows(result.rejects) == []


def test_order_seen_in_an_earlier_batch_is_a_duplicate():
    core = Core()
    assert counts(process(valid_order(1), valid_order(2), core=core)) == (2, 0, 0)
    result = process(valid_order(2), valid_order(3), core=core, batch_id="batch-2")
    assert counts(result) == (1, 1, 0)
    assert accepted_order_ids(result) == ["order-3"]


def test_full_window_evicts_its_oldest_key_first():
    core = Core(dedup_max_keys=3)
    process(valid_order(1), valid_order(2), valid_order(3), core=core)
    assert core.dedup_size == 3
    assert counts(process(valid_order(4), core=core)) == (1, 0, 0)  # evicts evt-1
    assert core.dedup_size == 3
    assert counts(process(valid_order(2), core=core)) == (0, 1, 0)  # evt-2 is still there
    assert counts(process(valid_order(1), core=core)) == (1, 0, 0)  # evt-1 was evicted
    assert counts(process(valid_order(3), core=core)) == (0, 1, 0)
    assert counts(process(valid_order(2), core=core)) == (1, 0, 0)  # re-inserting evt-1 evicted evt-2


def test_repeat_inside_one_batch_is_a_duplicate_even_when_the_window_cannot_hold_the_batch():
    # The spec: within a batch, later occurrences are duplicates, whatever the window size.
    core = Core(dedup_max_keys=2)
    result = process(valid_order(1), valid_order(2), valid_order(3), valid_order(1), core=core)
    assert counts(result) == (3, 1, 0)
    assert accepted_order_ids(result) == ["order-1", "order-2", "order-3"]


def test_key_expires_once_max_age_has_passed():
    core = Core(dedup_max_age_s=10)
    assert counts(process(valid_order(1), core=core, now_ms=NOW_MS)) == (1, 0, 0)
    assert counts(process(valid_order(1), core=core, now_ms=NOW_MS + 9_999)) == (0, 1, 0)
    assert counts(process(valid_order(1), core=core, now_ms=NOW_MS + 10_000)) == (1, 0, 0)


def test_seeing_a_duplicate_does_not_refresh_its_age():
    core = Core(dedup_max_age_s=10)
    process(valid_order(1), core=core, now_ms=NOW_MS)
    for now_ms in (NOW_MS + 5_000, NOW_MS + 9_000):
        assert counts(process(valid_order(1), core=core, now_ms=now_ms)) == (0, 1, 0)
    assert counts(process(valid_order(1), core=core, now_ms=NOW_MS + 10_000)) == (1, 0, 0)


def test_expired_keys_leave_the_window_at_the_next_batch():
    core = Core(dedup_max_age_s=10)
    process(valid_order(1), valid_order(2), core=core, now_ms=NOW_MS)
    process(valid_order(3), core=core, now_ms=NOW_MS + 4_000)
    assert core.dedup_size == 3
    process(valid_order(4), core=core, now_ms=NOW_MS + 10_000)  # evt-1 and evt-2 expire
    assert core.dedup_size == 2
    process(valid_order(5), core=core, now_ms=NOW_MS + 14_000)  # evt-3 expires
    assert core.dedup_size == 2


def test_fractional_max_age_is_kept_to_the_millisecond():
    core = Core(dedup_max_age_s=0.25)
    process(valid_order(1), core=core, now_ms=NOW_MS)
    assert counts(process(valid_order(1), core=core, now_ms=NOW_MS + 249)) == (0, 1, 0)
    assert counts(process(valid_order(1), core=core, now_ms=NOW_MS + 250)) == (1, 0, 0)


def test_now_ms_defaults_to_the_wall_clock():
    core = Core(dedup_max_age_s=60)
    process_at_wall_clock = core.process(batch_bytes(valid_order(1)))
    assert process_at_wall_clock.accepted == 1
    wall_ms = time.time_ns() // 1_000_000
    assert counts(process(valid_order(1), core=core, now_ms=wall_ms)) == (0, 1, 0)
    assert counts(process(valid_order(1), core=core, now_ms=wall_ms + 61_000)) == (1, 0, 0)


def test_order_without_event_id_is_a_duplicate_only_of_identical_bytes():
    order = valid_order(1)
    order.event_id = ""
    same = valid_order(1)
    same.event_id = ""
    other = valid_order(1)
    other.event_id = ""
    other.payments[0].payment_installments = 4  # one field differs
    core = Core()
    result = process(order, same, other, core=core)
    assert counts(result) == (2, 1, 0)
    assert counts(process(same, core=core, batch_id="batch-2")) == (0, 1, 0)
    assert core.dedup_size == 2


def test_order_without_event_id_is_keyed_by_its_bytes_as_sent_not_by_its_values():
    # The same fields in another order on the wire are other bytes, so another key.
    order = valid_order(1)
    order.event_id = ""
    canonical = order.SerializeToString()
    status_first = field_varint(4, order.order_status) + canonical.replace(field_varint(4, order.order_status), b"")
    assert ingest_pb2.Order.FromString(status_first) == order
    data = batch_bytes() + field_len(3, canonical) + field_len(3, status_first) + field_len(3, canonical)
    assert counts(Core().process(data, now_ms=NOW_MS)) == (2, 1, 0)


def test_order_without_event_id_is_not_a_duplicate_of_one_with_an_event_id():
    with_event_id = valid_order(1)
    without = valid_order(1)
    without.event_id = ""
    assert counts(process(with_event_id, without)) == (2, 0, 0)


def test_rejected_order_does_not_take_its_key():
    invalid = valid_order(1)
    invalid.order_status = 0
    core = Core()
    result = process(invalid, valid_order(1), core=core)
    assert counts(result) == (1, 0, 1)
    assert core.dedup_size == 1
    invalid_again = valid_order(2)
    invalid_again.customer_id = ""
    assert counts(process(invalid_again, core=core, batch_id="batch-2")) == (0, 0, 1)
    assert counts(process(valid_order(2), core=core, batch_id="batch-3")) == (1, 0, 0)


def test_forget_lets_a_resent_batch_be_accepted_again():
    core = Core()
    data = batch_bytes(valid_order(1), valid_order(2), valid_order(2))
    first = core.process(data, now_ms=NOW_MS)
    assert counts(first) == (2, 1, 0)
    assert core.forget(first) == 2
    assert core.dedup_size == 0
    assert counts(core.process(data, now_ms=NOW_MS + 1)) == (2, 1, 0)


def test_forget_removes_only_that_results_keys_still_in_the_window():
    core = Core(dedup_max_keys=3)
    first = process(valid_order(1), valid_order(2), core=core)
    second = process(valid_order(3), valid_order(4), core=core)  # evicts evt-1
    assert core.forget(first) == 1  # evt-2 only
    assert core.dedup_size == 2
    assert core.forget(first) == 0
    assert counts(process(valid_order(3), valid_order(2), core=core)) == (1, 1, 0)
    assert core.forget(second) == 2


def test_forgotten_keys_do_not_use_up_window_capacity():
    core = Core(dedup_max_keys=3)
    process(valid_order(1), valid_order(2), core=core)
    third = process(valid_order(3), core=core)
    assert core.forget(third) == 1
    process(valid_order(4), core=core)  # the window holds evt-1, evt-2, evt-4: still room
    assert core.dedup_size == 3
    assert counts(process(valid_order(1), core=core)) == (0, 1, 0)


def test_counts_add_up_to_the_number_of_orders():
    generator = OrderGenerator(seed=11, duplicate_ratio=0.1, invalid_ratio=0.1)
    core = Core(dedup_max_keys=500)
    reference = ReferenceCore(dedup_max_keys=500)
    for k in range(4):
        batch = generator.batch(300)
        data = batch.SerializeToString()
        result = core.process(data, now_ms=NOW_MS + k)
        expected = reference.process(data, now_ms=NOW_MS + k)
        assert result.accepted + result.duplicates + result.rejected == len(batch.orders)
        assert counts(result) == counts(expected)
        assert result.duplicates > 0 and result.rejected > 0
        assert core.dedup_size == reference.dedup_size


def test_dedup_size_counts_accepted_keys_only():
    core = Core()
    invalid = valid_order(9)
    invalid.order_id = ""
    process(valid_order(1), valid_order(1), invalid, core=core)
    assert core.dedup_size == 1
    process(valid_order(1), valid_order(2), valid_order(3), core=core)
    assert core.dedup_size == 3


def test_window_memory_per_key_is_a_sane_number_of_bytes():
    max_keys = 200_000
    core = Core(dedup_max_keys=max_keys)
    order = valid_order(0)
    for k in range(4):
        orders = []
        for n in range(k * max_keys // 4, (k + 1) * max_keys // 4):
            order.event_id = f"evt-{n}"
            orders.append(order.SerializeToString())
        # Join pre-serialised orders (field 3) behind a batch_id field: much
        # faster than building 50,000 messages into one OrderBatch.
        data = batch_bytes(batch_id=f"fill-{k}") + b"".join(field_len(3, o) for o in orders)
        assert core.process(data, now_ms=NOW_MS).accepted == len(orders)
    assert core.dedup_size == max_keys
    assert 16 <= core.dedup_bytes_per_key <= 128
    assert 16 * max_keys <= core.dedup_memory_bytes <= 128 * max_keys
