"""`keystone-ingest replay --olist-dir DIR`: stream the public Olist dataset into the service.

    summary = run_replay(ReplayOptions(olist_dir=Path("data/olist"), target="127.0.0.1:50051"))

Reads four files of the Brazilian E-Commerce Public Dataset by Olist, exactly
as published (header names, quoting, formats):

    olist_orders_dataset.csv          one row per order
    olist_order_items_dataset.csv     one row per item (order_item_id 1..n)
    olist_order_payments_dataset.csv  one row per payment (payment_sequential 1..n)
    olist_customers_dataset.csv       one row per customer_id

The three child files are loaded into memory (about 120k rows each in the
real dataset); the orders file is streamed, and each order is joined with its
items, payments and customer and sent as it is read, in file order. Items and
payments are sorted by their sequence numbers.

Conversions, and why:
- Money ("58.90") becomes integer cents through `Decimal`, exactly; a value
  with more than two decimals is a data error, never rounded.
- Timestamps ("2017-10-02 10:56:33") are wall-clock times in Brazil
  (America/Sao_Paulo, UTC-3, UTC-2 under the daylight saving time Brazil had
  until 2019). They are converted to the UTC instants the contract carries,
  with the IANA rules, so Bronze's UTC date partitions are right; `--timezone
  UTC` reads them as UTC instead. An empty cell means "not happened yet" and
  leaves the field unset.
- `event_id` is `olist:{order_id}` and each batch_id is a hash of the batch's
  content, so replaying the dataset again is answered with DUPLICATE_BATCH (or,
  with another batch size, the orders are dropped by the dedup window): a
  replay is idempotent.
- Zip code prefixes stay strings ("01151" keeps its zero). An order without
  items, payments or a customer row is sent as it is; the server's validation
  decides about it.

A row the contract cannot express (an order status or payment type outside
the enums, an unreadable timestamp, number or amount) skips its whole order,
with a warning; the summary counts skipped orders per reason. `--strict`
stops at the first such row instead. Missing files or columns always stop.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import csv
import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from keystone_ingest.client.client import with_batch_id
from keystone_ingest.client.load import IteratorSource, LoadOptions, LoadSummary, PreparedBatch, drive
from keystone_ingest.proto.v1 import ingest_pb2

log = logging.getLogger(__name__)

ORDERS_FILE = "olist_orders_dataset.csv"
ITEMS_FILE = "olist_order_items_dataset.csv"
PAYMENTS_FILE = "olist_order_payments_dataset.csv"
CUSTOMERS_FILE = "olist_customers_dataset.csv"

ORDER_COLUMNS = (
    "order_id",
    "customer_id",
    "order_status",
    "order_purchase_timestamp",
    "order_approved_at",
    "order_delivered_carrier_date",
    "order_delivered_customer_date",
    "order_estimated_delivery_date",
)
ITEM_COLUMNS = ("order_id", "order_item_id", "product_id", "seller_id", "shipping_limit_date", "price", "freight_value")
PAYMENT_COLUMNS = ("order_id", "payment_sequential", "payment_type", "payment_installments", "payment_value")
CUSTOMER_COLUMNS = (
    "customer_id",
    "customer_unique_id",
    "customer_zip_code_prefix",
    "customer_city",
    "customer_state",
)
_ORDER_TIMESTAMPS = ORDER_COLUMNS[3:]

DEFAULT_TIMEZONE = "America/Sao_Paulo"

ORDER_STATUSES = {
    "created": ingest_pb2.ORDER_STATUS_CREATED,
    "approved": ingest_pb2.ORDER_STATUS_APPROVED,
    "invoiced": ingest_pb2.ORDER_STATUS_INVOICED,
    "processing": ingest_pb2.ORDER_STATUS_PROCESSING,
    "shipped": ingest_pb2.ORDER_STATUS_SHIPPED,
    "delivered": ingest_pb2.ORDER_STATUS_DELIVERED,
    "unavailable": ingest_pb2.ORDER_STATUS_UNAVAILABLE,
    "canceled": ingest_pb2.ORDER_STATUS_CANCELED,
}
PAYMENT_TYPES = {
    "credit_card": ingest_pb2.PAYMENT_TYPE_CREDIT_CARD,
    "boleto": ingest_pb2.PAYMENT_TYPE_BOLETO,
    "voucher": ingest_pb2.PAYMENT_TYPE_VOUCHER,
    "debit_card": ingest_pb2.PAYMENT_TYPE_DEBIT_CARD,
    "not_defined": ingest_pb2.PAYMENT_TYPE_NOT_DEFINED,
}

# Warnings name the first few bad rows of each kind; the summary counts them all.
_WARNINGS_PER_REASON = 5


class OlistFormatError(ValueError):
    """A file is missing or lacks a column: nothing can be replayed."""


class RowProblem(ValueError):
    """A row the contract cannot express. `reason` is one of: unknown_order_status,
    unknown_payment_type, bad_timestamp, bad_money, bad_integer."""

    def __init__(self, reason: str, file: str, line: int, order_id: str, message: str) -> None:
        super().__init__(f"{file}:{line}: order {order_id}: {message}")
        self.reason = reason
        self.file = file
        self.line = line
        self.order_id = order_id


# -- reading and converting -----------------------------------------------------------------


class _Cells:
    """Converts the cells of one row, naming the row in any error."""

    def __init__(self, file: str, line: int, order_id: str, zone: dt.tzinfo | None) -> None:
        self.file, self.line, self.order_id, self.zone = file, line, order_id, zone

    def problem(self, reason: str, message: str) -> RowProblem:
        return RowProblem(reason, self.file, self.line, self.order_id, message)

    def seconds(self, column: str, text: str) -> int | None:
        """UTC epoch seconds of a "YYYY-MM-DD HH:MM:SS" wall-clock time; None for an empty cell."""
        if not text:
            return None
        try:
            local = dt.datetime.fromisoformat(text)
        except ValueError:
            raise self.problem("bad_timestamp", f"{column} {text!r} is not a timestamp") from None
        if local.tzinfo is not None:
            return int(local.timestamp())
        if self.zone is None:
            return calendar.timegm(local.timetuple())
        return int(local.replace(tzinfo=self.zone).timestamp())

    def cents(self, column: str, text: str) -> int:
        try:
            value = Decimal(text) * 100
        except InvalidOperation:
            raise self.problem("bad_money", f"{column} {text!r} is not an amount") from None
        if not value.is_finite() or value != value.to_integral_value():
            raise self.problem("bad_money", f"{column} {text!r} is not a whole number of cents")
        return int(value)

    def integer(self, column: str, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise self.problem("bad_integer", f"{column} {text!r} is not an integer") from None


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; checks the header names every column needed."""
    if not path.is_file():
        raise OlistFormatError(f"{path}: file not found")
    # utf-8-sig: a byte-order mark, as spreadsheet exports add, is not part of the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = [column for column in columns if column not in (reader.fieldnames or ())]
        if missing:
            raise OlistFormatError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            yield reader.line_num, row


class OlistReader:
    """Joined `Order` messages from an Olist directory (see the module docstring).

    After `orders()` is consumed: `orders_read` (order rows read), `skipped`
    (orders not sent, per reason), `unmatched_rows` (child rows whose order
    is not in the orders file, per file; counted only on a full read).
    """

    def __init__(self, directory: Path | str, *, timezone: str = DEFAULT_TIMEZONE, strict: bool = False) -> None:
        self.directory = Path(directory)
        self.zone = None if timezone.upper() == "UTC" else ZoneInfo(timezone)
        self.strict = strict
        self.orders_read = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.unmatched_rows: dict[str, int] = {}
        # Orders with a bad child row: skipped when their order row comes.
        self._bad_orders: dict[str, RowProblem] = {}

    def orders(self, limit: int | None = None) -> Iterator[ingest_pb2.Order]:
        """Orders in file order, at most `limit` of them sent (skipped ones do not count)."""
        items = self._load_items()
        payments = self._load_payments()
        customers = self._load_customers()
        seen: set[str] = set()
        sent = 0
        for line, row in _rows(self.directory / ORDERS_FILE, ORDER_COLUMNS):
            if limit is not None and sent >= limit:
                return
            self.orders_read += 1
            order_id = row["order_id"]
            seen.add(order_id)
            try:
                if order_id in self._bad_orders:
                    raise self._bad_orders[order_id]
                order = self._order(
                    line, row, items.get(order_id, ()), payments.get(order_id, ()), customers.get(row["customer_id"])
                )
            except RowProblem as problem:
                self._skip(problem)
                continue
            sent += 1
            yield order
        self.unmatched_rows = {
            ITEMS_FILE: sum(len(rows) for order_id, rows in items.items() if order_id not in seen),
            PAYMENTS_FILE: sum(len(rows) for order_id, rows in payments.items() if order_id not in seen),
        }

    def _skip(self, problem: RowProblem) -> None:
        if self.strict:
            raise problem
        self.skipped[problem.reason] += 1
        if self.skipped[problem.reason] <= _WARNINGS_PER_REASON:
            log.warning(
                "order skipped: %s",
                problem,
                extra={
                    "order_id": problem.order_id,
                    "reason": problem.reason,
                    "file": problem.file,
                    "line": problem.line,
                },
            )

    def _bad_child(self, problem: RowProblem) -> None:
        if self.strict:
            raise problem
        self._bad_orders.setdefault(problem.order_id, problem)

    def _order(self, line: int, row: dict[str, str], items, payments, customer) -> ingest_pb2.Order:
        order_id = row["order_id"]
        cells = _Cells(ORDERS_FILE, line, order_id, self.zone)
        status = ORDER_STATUSES.get(row["order_status"])
        if status is None:
            raise cells.problem("unknown_order_status", f"order_status {row['order_status']!r} is not an Olist status")
        order = ingest_pb2.Order(
            event_id=f"olist:{order_id}", order_id=order_id, customer_id=row["customer_id"], order_status=status
        )
        for column in _ORDER_TIMESTAMPS:
            seconds = cells.seconds(column, row[column])
            if seconds is not None:
                getattr(order, column).seconds = seconds
        for item_id, product_id, seller_id, shipping_s, price, freight in items:
            item = order.items.add(
                order_item_id=item_id,
                product_id=product_id,
                seller_id=seller_id,
                price_cents=price,
                freight_value_cents=freight,
            )
            if shipping_s is not None:
                item.shipping_limit_date.seconds = shipping_s
        for sequential, payment_type, installments, value in payments:
            order.payments.add(
                payment_sequential=sequential,
                payment_type=payment_type,
                payment_installments=installments,
                payment_value_cents=value,
            )
        if customer is not None:
            unique_id, zip_prefix, city, state = customer
            order.customer.customer_unique_id = unique_id
            order.customer.customer_zip_code_prefix = zip_prefix
            order.customer.customer_city = city
            order.customer.customer_state = state
        return order

    def _load_items(self) -> dict[str, list[tuple]]:
        items: dict[str, list[tuple]] = collections.defaultdict(list)
        for line, row in _rows(self.directory / ITEMS_FILE, ITEM_COLUMNS):
            cells = _Cells(ITEMS_FILE, line, row["order_id"], self.zone)
            try:
                items[row["order_id"]].append(
                    (
                        cells.integer("order_item_id", row["order_item_id"]),
                        row["product_id"],
                        row["seller_id"],
                        cells.seconds("shipping_limit_date", row["shipping_limit_date"]),
                        cells.cents("price", row["price"]),
                        cells.cents("freight_value", row["freight_value"]),
                    )
                )
            except RowProblem as problem:
                self._bad_child(problem)
        for rows in items.values():
            rows.sort(key=lambda item: item[0])
        return items

    def _load_payments(self) -> dict[str, list[tuple]]:
        payments: dict[str, list[tuple]] = collections.defaultdict(list)
        for line, row in _rows(self.directory / PAYMENTS_FILE, PAYMENT_COLUMNS):
            cells = _Cells(PAYMENTS_FILE, line, row["order_id"], self.zone)
            try:
                payment_type = PAYMENT_TYPES.get(row["payment_type"])
                if payment_type is None:
                    raise cells.problem(
                        "unknown_payment_type", f"payment_type {row['payment_type']!r} is not an Olist payment type"
                    )
                payments[row["order_id"]].append(
                    (
                        cells.integer("payment_sequential", row["payment_sequential"]),
                        payment_type,
                        cells.integer("payment_installments", row["payment_installments"]),
                        cells.cents("payment_value", row["payment_value"]),
                    )
                )
            except RowProblem as problem:
                self._bad_child(problem)
        for rows in payments.values():
            rows.sort(key=lambda payment: payment[0])
        return payments

    def _load_customers(self) -> dict[str, tuple[str, str, str, str]]:
        return {
            row["customer_id"]: (
                row["customer_unique_id"],
                row["customer_zip_code_prefix"],
                row["customer_city"],
                row["customer_state"],
            )
            for _, row in _rows(self.directory / CUSTOMERS_FILE, CUSTOMER_COLUMNS)
        }


def olist_batches(orders: Iterable[ingest_pb2.Order], batch_size: int, source: str) -> Iterator[PreparedBatch]:
    """Groups orders into serialised batches whose batch_id is `olist-` + a hash of their content."""
    batch = ingest_pb2.OrderBatch(source=source)
    for order in orders:
        batch.orders.append(order)
        if len(batch.orders) == batch_size:
            yield _seal(batch)
            batch = ingest_pb2.OrderBatch(source=source)
    if batch.orders:
        yield _seal(batch)


def _seal(batch: ingest_pb2.OrderBatch) -> PreparedBatch:
    content = batch.SerializeToString()  # batch_id still empty
    batch_id = "olist-" + hashlib.sha256(content).hexdigest()[:32]
    return PreparedBatch(batch_id, with_batch_id(content, batch_id), len(batch.orders))


# -- the run ---------------------------------------------------------------------------------


@dataclass
class ReplayOptions:
    """What `run_replay` does; the CLI flags map one to one (see client/cli.py)."""

    olist_dir: Path
    target: str = "127.0.0.1:50051"
    batch_size: int = 1000
    streams: int = 4
    max_in_flight: int = 8
    rate: float = 0.0  # orders/s over all streams; 0 = as fast as possible
    limit: int | None = None  # orders to send at most
    source: str = "olist-replay"
    timezone: str = DEFAULT_TIMEZONE
    strict: bool = False
    progress: bool = False
    retry_deadline_s: float = 60.0
    ack_timeout_s: float | None = 60.0
    credentials: grpc.ChannelCredentials | None = None
    metadata: Any = None


async def run_replay_async(options: ReplayOptions) -> LoadSummary:
    reader = OlistReader(options.olist_dir, timezone=options.timezone, strict=options.strict)
    batches = olist_batches(reader.orders(options.limit), options.batch_size, options.source)
    # Read the child files and the first batch before the clock starts (and
    # before connecting), so format errors surface at once.
    first = next(batches, None)
    send = LoadOptions(
        target=options.target,
        rate=options.rate,
        batch_size=options.batch_size,
        streams=options.streams,
        max_in_flight=options.max_in_flight,
        source=options.source,
        progress=options.progress,
        retry_deadline_s=options.retry_deadline_s,
        ack_timeout_s=options.ack_timeout_s,
        credentials=options.credentials,
        metadata=options.metadata,
    )
    ahead = _chain(first, batches) if first is not None else iter(())
    if options.strict:
        # Strict means nothing is sent from a file with a bad row: read it all first.
        ahead = iter(list(ahead))
    shared = IteratorSource(ahead)

    def extra() -> dict[str, Any]:
        return {
            "orders_read": reader.orders_read,
            "skipped_orders": dict(reader.skipped),
            "unmatched_rows": dict(reader.unmatched_rows),
        }

    return await drive([shared] * options.streams, send, seed=None, extra=extra)


def run_replay(options: ReplayOptions) -> LoadSummary:
    """Replay the dataset to completion and return its summary."""
    return asyncio.run(run_replay_async(options))


def _chain(first: PreparedBatch, rest: Iterator[PreparedBatch]) -> Iterator[PreparedBatch]:
    yield first
    yield from rest
