"""Synthetic orders shaped like the public Olist e-commerce dataset.

    gen = OrderGenerator(seed=7, duplicate_ratio=0.01, invalid_ratio=0.001)
    batch = gen.batch(10_000)                 # an ingest_pb2.OrderBatch
    payload = batch.SerializeToString()

Everything comes from one `random.Random(seed)`, so a seed always gives the same
orders, ids and batch ids, byte for byte. The proportions (order statuses,
items per order, payment types and installments, customer states, purchase
months and hours) follow the Olist dataset's published distributions closely
enough for load tests and benchmarks to see realistic shapes: mostly one item,
mostly delivered, mostly credit card, mostly São Paulo. An order serialises to
about 320 bytes on average.

`duplicate_ratio` re-emits an earlier valid order unchanged (same event_id, same
bytes), as an upstream retry would. `invalid_ratio` emits an order that breaks
exactly one validation rule of the core; the rules are taken in turn from
`INVALID_RULES`, so the k-th invalid order is rejected with reason
`INVALID_RULES[k % len(INVALID_RULES)]`.
"""

from __future__ import annotations

import calendar
import collections
import math
import random
import uuid
from collections.abc import Callable
from typing import cast

from keystone_ingest.proto.v1 import ingest_pb2

Order = ingest_pb2.Order

# Olist order counts per purchase month, 2016-09 .. 2018-10: the platform grew
# through 2017 and the export stops in October 2018.
_PURCHASE_MONTH_WEIGHTS = {
    (2016, 9): 4,
    (2016, 10): 324,
    (2016, 11): 0,
    (2016, 12): 1,
    (2017, 1): 800,
    (2017, 2): 1780,
    (2017, 3): 2682,
    (2017, 4): 2404,
    (2017, 5): 3700,
    (2017, 6): 3245,
    (2017, 7): 4026,
    (2017, 8): 4331,
    (2017, 9): 4285,
    (2017, 10): 4631,
    (2017, 11): 7544,
    (2017, 12): 5673,
    (2018, 1): 7269,
    (2018, 2): 6728,
    (2018, 3): 7211,
    (2018, 4): 6939,
    (2018, 5): 6873,
    (2018, 6): 6167,
    (2018, 7): 6292,
    (2018, 8): 6512,
    (2018, 9): 16,
    (2018, 10): 4,
}

# Olist purchases per hour of the day (local time): quiet nights, busy 10h-22h.
_PURCHASE_HOUR_WEIGHTS = (
    2394,
    1170,
    510,
    272,
    206,
    188,
    502,
    1231,
    2967,
    4785,
    6177,
    6578,
    5995,
    6518,
    6569,
    6454,
    6675,
    6150,
    5769,
    5982,
    6193,
    6217,
    5816,
    4123,
)

# Olist order counts per status (99,441 orders in all).
_STATUS_WEIGHTS = {
    ingest_pb2.ORDER_STATUS_DELIVERED: 96478,
    ingest_pb2.ORDER_STATUS_SHIPPED: 1107,
    ingest_pb2.ORDER_STATUS_CANCELED: 625,
    ingest_pb2.ORDER_STATUS_UNAVAILABLE: 609,
    ingest_pb2.ORDER_STATUS_INVOICED: 314,
    ingest_pb2.ORDER_STATUS_PROCESSING: 301,
    ingest_pb2.ORDER_STATUS_CREATED: 5,
    ingest_pb2.ORDER_STATUS_APPROVED: 2,
}

# Olist orders per number of items, cut at 6 (the real tail reaches 21).
_ITEM_COUNT_WEIGHTS = {1: 88863, 2: 7516, 3: 1322, 4: 505, 5: 204, 6: 198}

# Payment type of single-payment orders. Split payments (below) add vouchers,
# which brings the per-row mix to Olist's: credit card ~74%, boleto ~19%,
# voucher ~5.5%, debit card ~1.5%.
_SINGLE_PAYMENT_TYPE_WEIGHTS = {
    ingest_pb2.PAYMENT_TYPE_CREDIT_CARD: 770,
    ingest_pb2.PAYMENT_TYPE_BOLETO: 200,
    ingest_pb2.PAYMENT_TYPE_VOUCHER: 15,
    ingest_pb2.PAYMENT_TYPE_DEBIT_CARD: 15,
}
_SPLIT_PAYMENT_PROBABILITY = 0.03

# Olist credit card payments per number of installments (1..10).
_INSTALLMENT_WEIGHTS = {
    1: 25455,
    2: 12413,
    3: 10461,
    4: 7098,
    5: 5239,
    6: 3920,
    7: 1626,
    8: 4268,
    9: 644,
    10: 5328,
}

# Share of Olist customers per state; the rest of the 27 states are rarer.
_STATE_WEIGHTS = {
    "SP": 41.9,
    "RJ": 12.9,
    "MG": 11.7,
    "RS": 5.5,
    "PR": 5.1,
    "SC": 3.7,
    "BA": 3.4,
    "DF": 2.2,
    "ES": 2.0,
    "GO": 2.0,
    "PE": 1.7,
    "CE": 1.3,
    "PA": 1.0,
    "MT": 0.9,
    "MA": 0.75,
    "MS": 0.7,
    "PB": 0.5,
    "PI": 0.5,
    "RN": 0.5,
    "AL": 0.4,
    "SE": 0.35,
    "TO": 0.28,
    "RO": 0.25,
    "AM": 0.15,
    "AC": 0.08,
    "AP": 0.07,
    "RR": 0.05,
}

# (city as Olist writes it: lower case, no accents), weight within its state,
# and the range of 5-digit CEP prefixes the city's addresses fall in.
_CITIES_BY_STATE = {
    "SP": [
        ("sao paulo", 40, (1000, 5999)),
        ("campinas", 7, (13000, 13149)),
        ("guarulhos", 6, (7000, 7399)),
        ("sao bernardo do campo", 4, (9600, 9899)),
        ("santo andre", 4, (9000, 9299)),
        ("osasco", 4, (6000, 6299)),
        ("santos", 3, (11000, 11099)),
        ("ribeirao preto", 3, (14000, 14114)),
        ("sorocaba", 3, (18000, 18109)),
        ("sao jose dos campos", 3, (12200, 12248)),
    ],
    "RJ": [
        ("rio de janeiro", 60, (20000, 23799)),
        ("niteroi", 10, (24000, 24399)),
        ("nova iguacu", 7, (26000, 26099)),
        ("sao goncalo", 8, (24400, 24799)),
        ("duque de caxias", 6, (25000, 25499)),
    ],
    "MG": [
        ("belo horizonte", 45, (30000, 31999)),
        ("contagem", 8, (32000, 32399)),
        ("juiz de fora", 10, (36000, 36099)),
        ("uberlandia", 9, (38400, 38414)),
    ],
    "RS": [("porto alegre", 60, (90000, 91999)), ("caxias do sul", 15, (95000, 95124))],
    "PR": [("curitiba", 60, (80000, 82999)), ("londrina", 15, (86000, 86099))],
    "SC": [("florianopolis", 35, (88000, 88099)), ("joinville", 20, (89200, 89239))],
    "BA": [("salvador", 65, (40000, 42599)), ("feira de santana", 10, (44000, 44099))],
    "DF": [("brasilia", 1, (70000, 72799))],
    "ES": [("vitoria", 40, (29000, 29099)), ("vila velha", 45, (29100, 29129))],
    "GO": [("goiania", 1, (74000, 74899))],
    "PE": [("recife", 1, (50000, 52999))],
    "CE": [("fortaleza", 1, (60000, 61599))],
    "PA": [("belem", 1, (66000, 66999))],
    "MT": [("cuiaba", 1, (78000, 78109))],
    "MA": [("sao luis", 1, (65000, 65109))],
    "MS": [("campo grande", 1, (79000, 79124))],
    "PB": [("joao pessoa", 1, (58000, 58099))],
    "PI": [("teresina", 1, (64000, 64099))],
    "RN": [("natal", 1, (59000, 59099))],
    "AL": [("maceio", 1, (57000, 57099))],
    "SE": [("aracaju", 1, (49000, 49099))],
    "TO": [("palmas", 1, (77000, 77270))],
    "RO": [("porto velho", 1, (76800, 76834))],
    "AM": [("manaus", 1, (69000, 69099))],
    "AC": [("rio branco", 1, (69900, 69923))],
    "AP": [("macapa", 1, (68900, 68911))],
    "RR": [("boa vista", 1, (69300, 69339))],
}

# Olist has about 33,000 products from about 3,100 sellers; a few sell a lot.
_CATALOG_PRODUCTS = 32951
_CATALOG_SELLERS = 3095
_REPEAT_CUSTOMER_PROBABILITY = 0.03
# A multi-item order often repeats the same product (Olist lists one row per unit).
_SAME_PRODUCT_AGAIN_PROBABILITY = 0.55

# Brazil is UTC-3 (no daylight saving from 2019; close enough for synthetic data).
_LOCAL_UTC_OFFSET_S = -3 * 3600
_HOUR_S = 3600
_DAY_S = 86400

# How many recent valid orders a duplicate may copy: enough for duplicates to
# cross batch boundaries, small enough to stay inside a dedup window.
_DUPLICATE_HISTORY = 4096
_CUSTOMER_HISTORY = 10_000


# Each mutation turns a valid order into one the core rejects, imitating a
# plausible upstream bug. Orders given to them have at least one item and one
# payment.
def _event_id_repeated_four_times(order: Order) -> None:
    order.event_id = order.event_id * 4


def _order_id_missing(order: Order) -> None:
    order.order_id = ""


def _customer_id_with_unique_id_appended(order: Order) -> None:
    order.customer_id = order.customer_id + "-" + order.customer.customer_unique_id


def _status_left_at_default(order: Order) -> None:
    order.order_status = ingest_pb2.ORDER_STATUS_UNSPECIFIED


def _status_from_a_newer_schema(order: Order) -> None:
    # The stub types the field as the known values; proto3 enums are open and take any number.
    order.order_status = cast(ingest_pb2.OrderStatus, 9)


def _purchase_timestamp_dropped(order: Order) -> None:
    order.ClearField("order_purchase_timestamp")


def _purchase_nanos_one_second(order: Order) -> None:
    order.order_purchase_timestamp.nanos = 1_000_000_000


def _estimated_delivery_a_century_late(order: Order) -> None:
    order.order_estimated_delivery_date.seconds += 100 * 366 * _DAY_S


def _items_numbered_from_zero(order: Order) -> None:
    for number, item in enumerate(order.items):
        item.order_item_id = number


def _item_id_minus_one_as_uint32(order: Order) -> None:
    order.items[0].order_item_id = 2**32 - 1


def _first_item_sent_twice(order: Order) -> None:
    order.items.add().CopyFrom(order.items[0])


def _product_id_with_seller_id_appended(order: Order) -> None:
    order.items[0].product_id = order.items[0].product_id + "-" + order.items[0].seller_id


def _refund_sent_as_negative_price(order: Order) -> None:
    order.items[0].price_cents = -order.items[0].price_cents


def _payment_value_in_the_wrong_unit(order: Order) -> None:
    order.payments[0].payment_value_cents *= 10**10


def _installments_minus_one_as_uint32(order: Order) -> None:
    order.payments[0].payment_installments = 2**32 - 1


def _payment_type_left_at_default(order: Order) -> None:
    order.payments[0].payment_type = ingest_pb2.PAYMENT_TYPE_UNSPECIFIED


def _payment_type_from_a_newer_schema(order: Order) -> None:
    order.payments[0].payment_type = 6


def _city_with_full_address(order: Order) -> None:
    order.customer.customer_city = (order.customer.customer_city + ", rua sem nome ") * 16


_INVALID_MUTATIONS: tuple[tuple[str, Callable[[Order], None]], ...] = (
    ("event_id_too_long", _event_id_repeated_four_times),
    ("order_id_empty", _order_id_missing),
    ("customer_id_too_long", _customer_id_with_unique_id_appended),
    ("order_status_unspecified", _status_left_at_default),
    ("order_status_unknown", _status_from_a_newer_schema),
    ("purchase_timestamp_missing", _purchase_timestamp_dropped),
    ("timestamp_nanos_out_of_range", _purchase_nanos_one_second),
    ("timestamp_out_of_range", _estimated_delivery_a_century_late),
    ("item_id_zero", _items_numbered_from_zero),
    ("item_id_out_of_range", _item_id_minus_one_as_uint32),
    ("item_id_repeated", _first_item_sent_twice),
    ("text_too_long", _product_id_with_seller_id_appended),
    ("money_negative", _refund_sent_as_negative_price),
    ("money_out_of_range", _payment_value_in_the_wrong_unit),
    ("payment_counter_out_of_range", _installments_minus_one_as_uint32),
    ("payment_type_unspecified", _payment_type_left_at_default),
    ("payment_type_unknown", _payment_type_from_a_newer_schema),
    ("text_too_long", _city_with_full_address),
)
INVALID_RULES: tuple[str, ...] = tuple(reason for reason, _ in _INVALID_MUTATIONS)
"""Reason codes of the invalid orders, in the order they are produced (repeating)."""


def _month_start_s(year: int, month: int) -> int:
    return calendar.timegm((year, month, 1, 0, 0, 0))


class OrderGenerator:
    """Deterministic stream of Olist-like `Order` messages (see the module docstring)."""

    def __init__(self, seed: int = 0, duplicate_ratio: float = 0.0, invalid_ratio: float = 0.0) -> None:
        if duplicate_ratio < 0.0 or invalid_ratio < 0.0 or duplicate_ratio + invalid_ratio > 1.0:
            raise ValueError("duplicate_ratio and invalid_ratio must be >= 0 and sum to at most 1")
        self.seed = seed
        self.duplicate_ratio = duplicate_ratio
        self.invalid_ratio = invalid_ratio
        self._rng = random.Random(seed)
        self._batches_made = 0
        self._invalid_made = 0
        # Serialised, so a caller changing an order it was given cannot change its resends.
        self._recent_valid: collections.deque[bytes] = collections.deque(maxlen=_DUPLICATE_HISTORY)
        self._recent_customers: collections.deque[tuple[str, str, str, str]] = collections.deque(
            maxlen=_CUSTOMER_HISTORY
        )
        # Filled on first sale, so a product keeps its id, seller and price.
        self._products: dict[int, tuple[str, str, int]] = {}
        self._sellers: dict[int, str] = {}

        months = list(_PURCHASE_MONTH_WEIGHTS)
        self._months = [(_month_start_s(y, m), calendar.monthrange(y, m)[1]) for y, m in months]
        self._month_cum = list(_cumulative(_PURCHASE_MONTH_WEIGHTS.values()))
        self._hour_cum = list(_cumulative(_PURCHASE_HOUR_WEIGHTS))
        self._statuses = list(_STATUS_WEIGHTS)
        self._status_cum = list(_cumulative(_STATUS_WEIGHTS.values()))
        self._item_counts = list(_ITEM_COUNT_WEIGHTS)
        self._item_count_cum = list(_cumulative(_ITEM_COUNT_WEIGHTS.values()))
        self._payment_types = list(_SINGLE_PAYMENT_TYPE_WEIGHTS)
        self._payment_type_cum = list(_cumulative(_SINGLE_PAYMENT_TYPE_WEIGHTS.values()))
        self._installments = list(_INSTALLMENT_WEIGHTS)
        self._installment_cum = list(_cumulative(_INSTALLMENT_WEIGHTS.values()))
        self._states = list(_STATE_WEIGHTS)
        self._state_cum = list(_cumulative(_STATE_WEIGHTS.values()))
        self._city_cum = {
            state: list(_cumulative(weight for _, weight, _ in cities)) for state, cities in _CITIES_BY_STATE.items()
        }

    # -- public API -------------------------------------------------------

    def order(self) -> Order:
        """The next order: a fresh valid one, or a duplicate / invalid one at the configured ratios."""
        draw = self._rng.random()
        if draw < self.duplicate_ratio:
            if self._recent_valid:
                return Order.FromString(self._rng.choice(self._recent_valid))
        elif draw < self.duplicate_ratio + self.invalid_ratio:
            return self._invalid_order()
        order = self._valid_order()
        self._recent_valid.append(order.SerializeToString())
        return order

    def orders(self, n: int) -> list[Order]:
        return [self.order() for _ in range(n)]

    def batch(self, n: int, batch_id: str | None = None, source: str = "generator") -> ingest_pb2.OrderBatch:
        """An `OrderBatch` of the next `n` orders; batch ids default to `gen-{seed}-{k}` for the k-th batch."""
        if batch_id is None:
            batch_id = f"gen-{self.seed}-{self._batches_made}"
        self._batches_made += 1
        batch = ingest_pb2.OrderBatch(batch_id=batch_id, source=source)
        batch.orders.extend(self.orders(n))
        return batch

    # -- one order ----------------------------------------------------------

    def _invalid_order(self) -> Order:
        _, mutate = _INVALID_MUTATIONS[self._invalid_made % len(_INVALID_MUTATIONS)]
        self._invalid_made += 1
        order = self._valid_order(needs_items=True)
        mutate(order)
        return order

    def _valid_order(self, needs_items: bool = False) -> Order:
        rng = self._rng
        order = Order(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            order_id=self._hex_id(),
            customer_id=self._hex_id(),
        )
        status = _pick(rng, self._statuses, self._status_cum)
        order.order_status = status

        purchase_s = self._purchase_time_s()
        order.order_purchase_timestamp.seconds = purchase_s
        approved_s = purchase_s + self._approval_delay_s()
        carrier_s = approved_s + int(_DAY_S * rng.lognormvariate(math.log(1.8), 0.9))
        delivered_s = carrier_s + int(_DAY_S * rng.lognormvariate(math.log(7.0), 0.6))
        # Olist's estimate is a date (midnight), typically three weeks out.
        estimated_days = max(3, round(rng.lognormvariate(math.log(23.0), 0.35)))
        estimated_s = (purchase_s // _DAY_S + estimated_days) * _DAY_S

        has_approval = status not in (ingest_pb2.ORDER_STATUS_CREATED, ingest_pb2.ORDER_STATUS_CANCELED) or (
            status == ingest_pb2.ORDER_STATUS_CANCELED and rng.random() < 0.85
        )
        has_carrier = status in (ingest_pb2.ORDER_STATUS_SHIPPED, ingest_pb2.ORDER_STATUS_DELIVERED) or (
            status == ingest_pb2.ORDER_STATUS_CANCELED and has_approval and rng.random() < 0.1
        )
        if has_approval:
            order.order_approved_at.seconds = approved_s
        if has_carrier:
            order.order_delivered_carrier_date.seconds = carrier_s
        if status == ingest_pb2.ORDER_STATUS_DELIVERED:
            order.order_delivered_customer_date.seconds = delivered_s
        order.order_estimated_delivery_date.seconds = estimated_s

        # Olist's unavailable orders were paid for but never got items.
        if status == ingest_pb2.ORDER_STATUS_UNAVAILABLE and not needs_items:
            total_cents = self._catalog_price_cents()
        else:
            total_cents = self._add_items(order, approved_s)
        self._add_payments(order, total_cents)
        self._add_customer(order)
        return order

    def _add_items(self, order: Order, approved_s: int) -> int:
        rng = self._rng
        count = _pick(rng, self._item_counts, self._item_count_cum)
        shipping_limit_s = approved_s + int(_DAY_S * rng.uniform(4.0, 9.0))
        freight_cents = _freight_cents(rng)
        total_cents = 0
        product = self._catalog_product()
        for number in range(1, count + 1):
            if number > 1 and rng.random() >= _SAME_PRODUCT_AGAIN_PROBABILITY:
                product = self._catalog_product()
                freight_cents = _freight_cents(rng)
            product_id, seller_id, price_cents = product
            item = order.items.add(
                order_item_id=number,
                product_id=product_id,
                seller_id=seller_id,
                price_cents=price_cents,
                freight_value_cents=freight_cents,
            )
            item.shipping_limit_date.seconds = shipping_limit_s
            total_cents += price_cents + freight_cents
        return total_cents

    def _add_payments(self, order: Order, total_cents: int) -> None:
        rng = self._rng
        if rng.random() < _SPLIT_PAYMENT_PROBABILITY and total_cents >= 200:
            # A voucher covers part; a card (or a second voucher) pays the rest.
            voucher_cents = rng.randint(100, total_cents - 100)
            order.payments.add(
                payment_sequential=1,
                payment_type=ingest_pb2.PAYMENT_TYPE_VOUCHER,
                payment_installments=1,
                payment_value_cents=voucher_cents,
            )
            second_type = ingest_pb2.PAYMENT_TYPE_CREDIT_CARD if rng.random() < 0.7 else ingest_pb2.PAYMENT_TYPE_VOUCHER
            order.payments.add(
                payment_sequential=2,
                payment_type=second_type,
                payment_installments=self._installments_for(second_type),
                payment_value_cents=total_cents - voucher_cents,
            )
            return
        payment_type = _pick(rng, self._payment_types, self._payment_type_cum)
        order.payments.add(
            payment_sequential=1,
            payment_type=payment_type,
            payment_installments=self._installments_for(payment_type),
            payment_value_cents=total_cents,
        )

    def _add_customer(self, order: Order) -> None:
        rng = self._rng
        if self._recent_customers and rng.random() < _REPEAT_CUSTOMER_PROBABILITY:
            # Olist gives every order a new customer_id; a returning buyer
            # keeps customer_unique_id and usually the address.
            unique_id, zip_prefix, city, state = rng.choice(self._recent_customers)
        else:
            state = _pick(rng, self._states, self._state_cum)
            cities = _CITIES_BY_STATE[state]
            city, _, (zip_low, zip_high) = _pick(rng, cities, self._city_cum[state])
            unique_id = self._hex_id()
            zip_prefix = f"{rng.randint(zip_low, zip_high):05d}"
            self._recent_customers.append((unique_id, zip_prefix, city, state))
        customer = order.customer
        customer.customer_unique_id = unique_id
        customer.customer_zip_code_prefix = zip_prefix
        customer.customer_city = city
        customer.customer_state = state

    # -- pieces ---------------------------------------------------------------

    def _hex_id(self) -> str:
        # Olist ids are 32 lower-case hex digits (MD5-looking).
        return f"{self._rng.getrandbits(128):032x}"

    def _purchase_time_s(self) -> int:
        rng = self._rng
        month_start_s, days_in_month = _pick(rng, self._months, self._month_cum)
        hour = _pick(rng, range(24), self._hour_cum)
        local_s = month_start_s + rng.randrange(days_in_month) * _DAY_S + hour * _HOUR_S + rng.randrange(_HOUR_S)
        return local_s - _LOCAL_UTC_OFFSET_S

    def _approval_delay_s(self) -> int:
        rng = self._rng
        # Most payments clear in minutes; boleto and reviewed ones take days.
        if rng.random() < 0.8:
            return int(60 * rng.lognormvariate(math.log(15.0), 0.8))
        return int(_DAY_S * rng.uniform(0.5, 4.0))

    def _installments_for(self, payment_type: int) -> int:
        if payment_type == ingest_pb2.PAYMENT_TYPE_CREDIT_CARD:
            return _pick(self._rng, self._installments, self._installment_cum)
        return 1

    def _catalog_product(self) -> tuple[str, str, int]:
        # Cubing a uniform draw makes low indexes (best sellers) much more likely.
        index = int(_CATALOG_PRODUCTS * self._rng.random() ** 3)
        product = self._products.get(index)
        if product is None:
            seller_index = int(_CATALOG_SELLERS * self._rng.random() ** 2)
            seller_id = self._sellers.get(seller_index)
            if seller_id is None:
                seller_id = self._sellers[seller_index] = self._hex_id()
            product = (self._hex_id(), seller_id, self._catalog_price_cents())
            self._products[index] = product
        return product

    def _catalog_price_cents(self) -> int:
        rng = self._rng
        # Olist prices: median about R$75, long tail; shops like .90 and .99 endings.
        reais = min(3000, max(5, int(rng.lognormvariate(math.log(75.0), 0.9))))
        ending = rng.random()
        cents = 90 if ending < 0.4 else 99 if ending < 0.65 else 0 if ending < 0.85 else rng.randrange(100)
        return reais * 100 + cents


def _freight_cents(rng: random.Random) -> int:
    # Olist freight: median about R$16, rarely above R$50.
    return min(5000, max(500, int(100 * rng.lognormvariate(math.log(16.0), 0.45))))


def _cumulative(weights) -> list[float]:
    total = 0.0
    out = []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _pick(rng: random.Random, population, cum_weights: list[float]):
    return rng.choices(population, cum_weights=cum_weights)[0]
