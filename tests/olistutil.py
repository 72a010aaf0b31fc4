"""Small files in the exact format of the public Olist dataset, for replay tests.

The published orders and customers files quote every value; the items and
payments files quote none. Both styles are written here, as are the
dataset's empty cells for events that did not happen, zip prefixes with a
leading zero, and its timestamp and amount formats.
"""

from __future__ import annotations

import csv
from pathlib import Path

A, B, C = "e481f51cbdc54678b7cc49136f2d6af7", "53cdb2fc8bc7dce0b6741e2150273451", "47770eb9100c2d0c44946d9cf07ec65d"
D, E, F = "949d5b44dbf5de918fe9c16f97b45f8a", "ad21c59c0840e6cb83a9ceb5573f8159", "a4591c265e18cb1dcee52889e2d8acc3"
ORPHAN = "ffffffffffffffffffffffffffffffff"
PRODUCT, SELLER = "87285b34884572647811a353c7ac498a", "3504c0cb71d7fa48d967e0e4c94d59d9"

ORDERS = [
    [
        "order_id",
        "customer_id",
        "order_status",
        "order_purchase_timestamp",
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
        "order_estimated_delivery_date",
    ],
    [
        A,
        "9ef432eb6251297304e76186b10a928d",
        "delivered",
        "2017-10-02 10:56:33",
        "2017-10-02 11:07:15",
        "2017-10-04 19:55:00",
        "2017-10-10 21:25:13",
        "2017-10-18 00:00:00",
    ],
    [
        B,
        "b0830fb4747a6c6d20dea0b8c802d7ef",
        "invoiced",
        "2017-12-05 09:00:00",
        "2017-12-05 09:10:00",
        "",
        "",
        "2018-01-02 00:00:00",
    ],
    [C, "41ce2a54c0b03bf3443c3d931a367089", "canceled", "2018-08-28 15:26:39", "", "", "", "2018-09-12 00:00:00"],
    [D, "f88197465ea7920adcdbec7375364d82", "pending", "2017-11-18 19:28:06", "", "", "", "2017-12-15 00:00:00"],
    [
        E,
        "8ab97904e6daea8866dbdbc4fb7aad2c",
        "delivered",
        "2018-07-24 20:41:37",
        "2018-07-26 03:24:27",
        "2018-07-26 14:31:00",
        "2018-08-07 15:27:45",
        "2018-08-13 00:00:00",
    ],
    [F, "503740e9ca751ccdda7ba28e9ab8f608", "delivered", "2018-02-30 10:00:00", "", "", "", "2018-03-20 00:00:00"],
]
ITEMS = [
    ["order_id", "order_item_id", "product_id", "seller_id", "shipping_limit_date", "price", "freight_value"],
    [A, "2", PRODUCT, SELLER, "2017-10-06 11:07:15", "29.99", "8.72"],  # listed before item 1
    [A, "1", PRODUCT, SELLER, "2017-10-06 11:07:15", "29.99", "8.72"],
    [
        B,
        "1",
        "595fac2a385ac33a80bd5114aec74eb8",
        "289cdb325fb7e7f891c38608bf9e0962",
        "2017-12-11 09:10:00",
        "118.70",
        "22.76",
    ],
    [
        E,
        "1",
        "aa4383b373c6aca5d8797843e5594415",
        "4869f7a5dfa277a7dca6462dcf3b52b2",
        "2018-07-30 03:24:27",
        "159.90",
        "19.22",
    ],
    [ORPHAN, "1", PRODUCT, SELLER, "2018-01-01 00:00:00", "10.00", "1.00"],
]
PAYMENTS = [
    ["order_id", "payment_sequential", "payment_type", "payment_installments", "payment_value"],
    [A, "3", "voucher", "1", "2.00"],
    [A, "1", "credit_card", "1", "18.12"],
    [A, "2", "voucher", "1", "57.30"],
    [B, "1", "boleto", "1", "141.46"],
    [C, "1", "not_defined", "1", "0.00"],
    [E, "1", "credit_card", "3", "179.125"],  # a fraction of a cent: not an amount Olist can have
]
CUSTOMERS = [
    ["customer_id", "customer_unique_id", "customer_zip_code_prefix", "customer_city", "customer_state"],
    ["9ef432eb6251297304e76186b10a928d", "7c396fd4830fd04220f754e42b4e5bff", "03149", "sao paulo", "SP"],
    [
        "b0830fb4747a6c6d20dea0b8c802d7ef",
        "af07308b275d755c9edb36a90c618231",
        "13456",
        "santa barbara d'oeste, sp",
        "SP",
    ],
    ["8ab97904e6daea8866dbdbc4fb7aad2c", "3a653a41f6f9fc3d2a113cf8398680e8", "47813", "barreiras", "BA"],
]


def write_olist(directory: Path, orders=ORDERS, items=ITEMS, payments=PAYMENTS, customers=CUSTOMERS) -> Path:
    for name, rows, quoting in (
        ("olist_orders_dataset.csv", orders, csv.QUOTE_ALL),
        ("olist_order_items_dataset.csv", items, csv.QUOTE_MINIMAL),
        ("olist_order_payments_dataset.csv", payments, csv.QUOTE_MINIMAL),
        ("olist_customers_dataset.csv", customers, csv.QUOTE_ALL),
    ):
        with (directory / name).open("w", newline="", encoding="utf-8") as file:
            csv.writer(file, quoting=quoting, lineterminator="\n").writerows(rows)
    return directory
