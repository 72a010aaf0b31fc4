// Stage 1, decode: OrderBatch bytes -> BatchView, the one plain structure the
// later stages read. Strings stay spans of the input (nothing is copied);
// numbers are kept as they arrived, out-of-range values included, so that
// validation, not decoding, decides what an order may hold.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "keystone/status.h"
#include "keystone/wire.h"

namespace keystone {

struct Timestamp {
  int64_t seconds = 0;
  int32_t nanos = 0;
  bool present = false;  // the field occurred (possibly empty)
};

struct ItemView {
  uint32_t order_item_id = 0;
  Span product_id;
  Span seller_id;
  Timestamp shipping_limit_date;
  int64_t price_cents = 0;
  int64_t freight_value_cents = 0;
};

struct PaymentView {
  uint32_t payment_sequential = 0;
  int32_t payment_type = 0;
  uint32_t payment_installments = 0;
  int64_t payment_value_cents = 0;
};

struct CustomerView {
  Span customer_unique_id;
  Span customer_zip_code_prefix;
  Span customer_city;
  Span customer_state;
  bool present = false;
};

// Order timestamps in field order (Order fields 5..9).
enum OrderTimestamp : int {
  kPurchase = 0,
  kApproved,
  kDeliveredCarrier,
  kDeliveredCustomer,
  kEstimatedDelivery,
  kOrderTimestampCount,
};

struct OrderView {
  Span bytes;  // the whole Order message, as published to Kafka
  Span event_id;
  Span order_id;
  Span customer_id;
  int32_t order_status = 0;
  Timestamp timestamps[kOrderTimestampCount];
  uint32_t items_begin = 0, items_end = 0;        // range in BatchView::items
  uint32_t payments_begin = 0, payments_end = 0;  // range in BatchView::payments
  CustomerView customer;
};

// Lineage that travels with each order rather than with its batch: orders
// read back from Kafka, where every record carries its own batch_id, source
// and producer headers (copied into the view's buffer like the orders).
struct OrderLineage {
  Span batch_id;
  Span source;
  Span producer;
  bool has_producer = false;
};

struct BatchView {
  const uint8_t* data = nullptr;  // the input; every Span points into it
  size_t size = 0;
  Span batch_id;
  Span source;
  std::vector<OrderView> orders;
  std::vector<ItemView> items;
  std::vector<PaymentView> payments;
  // Row for row with orders when the orders carry their own lineage (then
  // batch_id and source above are unused); empty for a decoded OrderBatch.
  std::vector<OrderLineage> lineage;

  const char* str(Span s) const { return reinterpret_cast<const char*>(data) + s.offset; }
  void clear();
};

// Bounds that keep a hostile batch from growing memory far past its own size.
struct DecodeLimits {
  uint32_t max_orders = 100000;
  uint32_t max_items_per_order = 1000;
  uint32_t max_payments_per_order = 1000;
};

// Decodes [data, data + size) into *out (cleared first; its vectors keep
// their capacity, so a reused view stops allocating). On failure returns the
// code and fills *error with the byte offset and the field path.
Code decode_batch(const uint8_t* data, size_t size, const DecodeLimits& limits, BatchView* out, Error* error);

// Decodes the one Order message at out->data[order.offset, +order.length)
// and appends it (items and payments too) to *out, which is not cleared:
// orders read from Kafka records one at a time share one view, whose data
// and size the caller sets (every order's bytes inside them). On failure
// nothing is appended, and the error's offset and message count bytes from
// the Order's first byte.
Code decode_order(Span order, const DecodeLimits& limits, BatchView* out, Error* error);

// Finds the batch_id of an OrderBatch without decoding its orders: steps over
// top-level fields only (last batch_id wins, as in decode_batch). The server
// asks this before the full decode so a resent batch_id is answered without
// touching the dedup window. Returns false when the bytes do not parse that far
// or the id is not valid UTF-8; decode_batch then reports the exact error.
bool peek_batch_id(const uint8_t* data, size_t size, Span* batch_id);

}  // namespace keystone
