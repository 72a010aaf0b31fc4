#include "keystone/arrow.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>

#include "keystone/kafka_hash.h"

namespace keystone {
namespace {

using CT = ColumnType;

// The tables down to kPaymentType are laid out by hand, one field per line,
// and clang-format would pack them into a grid and split the braced-list macros.
// clang-format off
// The four tables' fields, shared by the ingest tables and Bronze's.
#define KS_ORDERS_FIELDS \
    {"event_id", CT::kUtf8}, \
    {"order_id", CT::kUtf8}, \
    {"customer_id", CT::kUtf8}, \
    {"order_status", CT::kUtf8}, \
    {"order_purchase_timestamp", CT::kTimestampUs}, \
    {"order_approved_at", CT::kTimestampUs}, \
    {"order_delivered_carrier_date", CT::kTimestampUs}, \
    {"order_delivered_customer_date", CT::kTimestampUs}, \
    {"order_estimated_delivery_date", CT::kTimestampUs}, \
    {"batch_id", CT::kUtf8}, \
    {"source", CT::kUtf8}

#define KS_ORDER_ITEMS_FIELDS \
    {"order_id", CT::kUtf8}, \
    {"order_item_id", CT::kInt32}, \
    {"product_id", CT::kUtf8}, \
    {"seller_id", CT::kUtf8}, \
    {"shipping_limit_date", CT::kTimestampUs}, \
    {"price", CT::kDecimal12_2}, \
    {"freight_value", CT::kDecimal12_2}, \
    {"batch_id", CT::kUtf8}, \
    {"source", CT::kUtf8}

#define KS_ORDER_PAYMENTS_FIELDS \
    {"order_id", CT::kUtf8}, \
    {"payment_sequential", CT::kInt32}, \
    {"payment_type", CT::kUtf8}, \
    {"payment_installments", CT::kInt32}, \
    {"payment_value", CT::kDecimal12_2}, \
    {"batch_id", CT::kUtf8}, \
    {"source", CT::kUtf8}

#define KS_CUSTOMERS_FIELDS \
    {"customer_id", CT::kUtf8}, \
    {"customer_unique_id", CT::kUtf8}, \
    {"customer_zip_code_prefix", CT::kUtf8}, \
    {"customer_city", CT::kUtf8}, \
    {"customer_state", CT::kUtf8}, \
    {"batch_id", CT::kUtf8}, \
    {"source", CT::kUtf8}

constexpr FieldDef kOrders[] = {KS_ORDERS_FIELDS};
constexpr FieldDef kOrderItems[] = {KS_ORDER_ITEMS_FIELDS};
constexpr FieldDef kOrderPayments[] = {KS_ORDER_PAYMENTS_FIELDS};
constexpr FieldDef kCustomers[] = {KS_CUSTOMERS_FIELDS};
constexpr FieldDef kOrderSpans[] = {
    {"offset", CT::kInt64},
    {"length", CT::kInt32},
    {"key_hash", CT::kInt32},
    {"item_count", CT::kInt32},
    {"payment_count", CT::kInt32},
    {"customer_count", CT::kInt32},
    {"event_id_offset", CT::kInt64},
    {"event_id_length", CT::kInt32},
    {"order_id_offset", CT::kInt64},
    {"order_id_length", CT::kInt32},
};
constexpr FieldDef kRejects[] = {
    {"index", CT::kInt32},
    {"event_id", CT::kUtf8},
    {"reason", CT::kUtf8},
    {"message", CT::kUtf8},
    {"offset", CT::kInt64},
    {"length", CT::kInt32},
};

// Bronze's tables as read back from Kafka: the ones above plus producer, the
// authenticated caller (null without authentication).
#define KS_PRODUCER {"producer", CT::kUtf8}
constexpr FieldDef kBronzeOrders[] = {KS_ORDERS_FIELDS, KS_PRODUCER};
constexpr FieldDef kBronzeOrderItems[] = {KS_ORDER_ITEMS_FIELDS, KS_PRODUCER};
constexpr FieldDef kBronzeOrderPayments[] = {KS_ORDER_PAYMENTS_FIELDS, KS_PRODUCER};
constexpr FieldDef kBronzeCustomers[] = {KS_CUSTOMERS_FIELDS, KS_PRODUCER};
#undef KS_PRODUCER
#undef KS_ORDERS_FIELDS
#undef KS_ORDER_ITEMS_FIELDS
#undef KS_ORDER_PAYMENTS_FIELDS
#undef KS_CUSTOMERS_FIELDS
// server/bronze/layout.py's QUARANTINE_SCHEMA.
constexpr FieldDef kQuarantine[] = {
    {"batch_id", CT::kUtf8},
    {"source", CT::kUtf8},
    {"producer", CT::kUtf8},
    {"index", CT::kInt32},
    {"event_id", CT::kUtf8},
    {"reason", CT::kUtf8},
    {"message", CT::kUtf8},
    {"raw", CT::kBinary},
    {"received_at", CT::kTimestampUs},
};
constexpr FieldDef kChildCounts[] = {
    {"item_count", CT::kInt32},
    {"payment_count", CT::kInt32},
    {"customer_count", CT::kInt32},
};

#define KS_TABLE(name, fields) {name, fields, static_cast<int>(sizeof(fields) / sizeof((fields)[0]))}
constexpr TableDef kTables[] = {
    KS_TABLE("orders", kOrders),
    KS_TABLE("order_items", kOrderItems),
    KS_TABLE("order_payments", kOrderPayments),
    KS_TABLE("customers", kCustomers),
    KS_TABLE("order_spans", kOrderSpans),
    KS_TABLE("rejects", kRejects),
    KS_TABLE("orders", kBronzeOrders),
    KS_TABLE("order_items", kBronzeOrderItems),
    KS_TABLE("order_payments", kBronzeOrderPayments),
    KS_TABLE("customers", kBronzeCustomers),
    KS_TABLE("_quarantine", kQuarantine),
    KS_TABLE("child_counts", kChildCounts),
};
#undef KS_TABLE
static_assert(sizeof(kTables) / sizeof(kTables[0]) == static_cast<size_t>(TableId::kCount_),
              "every TableId needs a TableDef");

struct Name {
  const char* text;
  uint32_t length;
};
#define KS_NAME(s) Name{s, sizeof(s) - 1}
// Olist's own spellings, indexed by the proto enum value.
constexpr Name kOrderStatus[] = {KS_NAME(""),          KS_NAME("created"),     KS_NAME("approved"),
                                 KS_NAME("invoiced"),  KS_NAME("processing"),  KS_NAME("shipped"),
                                 KS_NAME("delivered"), KS_NAME("unavailable"), KS_NAME("canceled")};
constexpr Name kPaymentType[] = {KS_NAME(""),        KS_NAME("credit_card"), KS_NAME("boleto"),
                                 KS_NAME("voucher"), KS_NAME("debit_card"),  KS_NAME("not_defined")};
#undef KS_NAME
// clang-format on

// ---------------------------------------------------------------- builders
// Each writer appends one value per row to a Column. They trust the caller
// to reserve; Buffer::extend still grows if a guess was short.

// Copies n bytes with at most two fixed-size moves per 16 bytes, reading and
// writing only inside [src, src + n) and [dst, dst + n).
// PERF NOTE: nearly every string here (ids, names, codes) is under 64 bytes;
// inline fixed-size moves beat a call into libc's memcpy for each of them.
inline void copy_small(uint8_t* dst, const uint8_t* src, size_t n) {
  if (n >= 16) {
    size_t i = 0;
    for (; i + 16 < n; i += 16) std::memcpy(dst + i, src + i, 16);
    std::memcpy(dst + n - 16, src + n - 16, 16);
  } else if (n >= 8) {
    uint64_t a, b;
    std::memcpy(&a, src, 8);
    std::memcpy(&b, src + n - 8, 8);
    std::memcpy(dst, &a, 8);
    std::memcpy(dst + n - 8, &b, 8);
  } else if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, src, 4);
    std::memcpy(&b, src + n - 4, 4);
    std::memcpy(dst, &a, 4);
    std::memcpy(dst + n - 4, &b, 4);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}

class Utf8Writer {
 public:
  Utf8Writer(Column* c, size_t rows, size_t bytes) : c_(c) {
    c_->values.reserve((rows + 1) * sizeof(int32_t));
    c_->data.reserve(bytes);
    put_offset();
  }
  void append(const void* p, size_t n) {
    copy_small(c_->data.extend(n), static_cast<const uint8_t*>(p), n);
    put_offset();
  }
  // Appends the same value `rows` times by doubling what is already written.
  void repeat(const void* p, size_t n, size_t rows) {
    if (rows == 0) return;
    if (n > 0) {
      uint8_t* data = c_->data.extend(n * rows);
      copy_small(data, static_cast<const uint8_t*>(p), n);
      for (size_t done = 1; done < rows;) {
        const size_t chunk = std::min(done, rows - done);
        std::memcpy(data + done * n, data, chunk * n);
        done += chunk;
      }
    }
    auto* offsets = reinterpret_cast<int32_t*>(c_->values.extend(rows * sizeof(int32_t)));
    const int32_t base = offsets[-1];
    for (size_t i = 0; i < rows; ++i) offsets[i] = base + static_cast<int32_t>((i + 1) * n);
  }

 private:
  void put_offset() {
    const int32_t end = static_cast<int32_t>(c_->data.size());
    std::memcpy(c_->values.extend(sizeof end), &end, sizeof end);
  }
  Column* c_;
};

template <typename T>
void put(Column* c, T v) {
  std::memcpy(c->values.extend(sizeof v), &v, sizeof v);
}

// Validity bits are written for every row; the bitmap is dropped at the end
// when no row was null, which is what Arrow expects for all-valid columns.
class TimestampWriter {
 public:
  TimestampWriter(Column* c, size_t rows) : c_(c) {
    c_->values.reserve(rows * sizeof(int64_t));
    c_->validity.reserve((rows + 7) / 8);
  }
  void append(const Timestamp& ts) {
    if ((row_ & 7) == 0) *c_->validity.extend(1) = 0;
    if (ts.present) {
      c_->validity.data()[row_ >> 3] |= static_cast<uint8_t>(1u << (row_ & 7));
      // nanos were validated to 0..999,999,999: truncation to microseconds.
      put<int64_t>(c_, ts.seconds * 1000000 + ts.nanos / 1000);
    } else {
      put<int64_t>(c_, 0);
      ++c_->null_count;
    }
    ++row_;
  }
  void finish() {
    if (c_->null_count == 0) c_->validity.reset();
  }

 private:
  Column* c_;
  size_t row_ = 0;
};

// decimal128(12, 2) of cents is the cents as a 128-bit little-endian integer.
void put_decimal(Column* c, int64_t cents) {
  const int64_t parts[2] = {cents, cents < 0 ? -1 : 0};
  std::memcpy(c->values.extend(16), parts, 16);
}

void fill_constant(Column* c, const BatchView& b, Span s, size_t rows) {
  Utf8Writer(c, rows, rows * s.length).repeat(b.str(s), s.length, rows);
}

// A validity bitmap of n rows, all null until set_valid.
void zero_bitmap(Column* c, size_t n) {
  const size_t bytes = (n + 7) / 8;
  if (bytes > 0) std::memset(c->validity.extend(bytes), 0, bytes);
}

// `count` copies of one value; one is the common case (an order's own row).
inline void put_times(Utf8Writer* w, const char* p, size_t n, size_t count) {
  if (count == 1) {
    w->append(p, n);
  } else {
    w->repeat(p, n, count);
  }
}

// Sets validity bits [from, from + count) of a bitmap that already covers them.
void set_valid(Column* c, size_t from, size_t count) {
  uint8_t* bits = c->validity.data();
  for (size_t row = from; row < from + count; ++row) bits[row >> 3] |= static_cast<uint8_t>(1u << (row & 7));
}

// The lineage columns of a table, c[0] batch_id, c[1] source and, when
// `producer`, c[2] producer: the batch's own on every row, or each order's
// on its `count(order)` rows when the view carries lineage per order.
template <typename Count>
void fill_lineage(Column* c, bool producer, const BatchView& b, const std::vector<uint32_t>& rows, size_t n,
                  Count count) {
  if (b.lineage.empty()) {
    fill_constant(&c[0], b, b.batch_id, n);
    fill_constant(&c[1], b, b.source, n);
    if (producer) {  // no lineage, no producer: all null
      Utf8Writer(&c[2], n, 0).repeat(nullptr, 0, n);
      zero_bitmap(&c[2], n);
      c[2].null_count = static_cast<int64_t>(n);
    }
    return;
  }
  size_t bytes[3] = {0, 0, 0};
  for (uint32_t i : rows) {
    const size_t k = count(b.orders[i]);
    const OrderLineage& l = b.lineage[i];
    bytes[0] += k * l.batch_id.length;
    bytes[1] += k * l.source.length;
    bytes[2] += k * l.producer.length;
  }
  Utf8Writer batch_id(&c[0], n, bytes[0]), source(&c[1], n, bytes[1]);
  for (uint32_t i : rows) {
    const size_t k = count(b.orders[i]);
    const OrderLineage& l = b.lineage[i];
    put_times(&batch_id, b.str(l.batch_id), l.batch_id.length, k);
    put_times(&source, b.str(l.source), l.source.length, k);
  }
  if (!producer) return;
  Utf8Writer writer(&c[2], n, bytes[2]);
  zero_bitmap(&c[2], n);
  size_t row = 0;
  for (uint32_t i : rows) {
    const size_t k = count(b.orders[i]);
    const OrderLineage& l = b.lineage[i];
    put_times(&writer, b.str(l.producer), l.producer.length, k);
    if (l.has_producer) {
      set_valid(&c[2], row, k);
    } else {
      c[2].null_count += static_cast<int64_t>(k);
    }
    row += k;
  }
  if (c[2].null_count == 0) c[2].validity.reset();
}

bool is_bronze(TableId id) { return id >= TableId::kBronzeOrders; }

std::shared_ptr<Table> new_table(TableId id) {
  auto t = std::make_shared<Table>();
  t->id = id;
  t->columns.resize(table_def(id).num_fields);
  return t;
}

// ------------------------------------------------------------------ tables

std::shared_ptr<Table> encode_orders(const BatchView& b, const std::vector<uint32_t>& rows, TableId id) {
  auto t = new_table(id);
  Column* c = t->columns.data();
  const size_t n = rows.size();
  size_t ev = 0, oid = 0, cid = 0;
  for (uint32_t i : rows) {
    ev += b.orders[i].event_id.length;
    oid += b.orders[i].order_id.length;
    cid += b.orders[i].customer_id.length;
  }
  Utf8Writer event_id(&c[0], n, ev), order_id(&c[1], n, oid), customer_id(&c[2], n, cid), status(&c[3], n, n * 9);
  TimestampWriter ts[kOrderTimestampCount] = {{&c[4], n}, {&c[5], n}, {&c[6], n}, {&c[7], n}, {&c[8], n}};
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    event_id.append(b.str(o.event_id), o.event_id.length);
    order_id.append(b.str(o.order_id), o.order_id.length);
    customer_id.append(b.str(o.customer_id), o.customer_id.length);
    status.append(kOrderStatus[o.order_status].text, kOrderStatus[o.order_status].length);
    for (int k = 0; k < kOrderTimestampCount; ++k) ts[k].append(o.timestamps[k]);
  }
  for (auto& w : ts) w.finish();
  fill_lineage(&c[9], is_bronze(id), b, rows, n, [](const OrderView&) { return size_t{1}; });
  t->num_rows = static_cast<int64_t>(n);
  return t;
}

std::shared_ptr<Table> encode_items(const BatchView& b, const std::vector<uint32_t>& rows, TableId id) {
  auto t = new_table(id);
  Column* c = t->columns.data();
  size_t n = 0, oid = 0, pid = 0, sid = 0;
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    const size_t k = o.items_end - o.items_begin;
    n += k;
    oid += k * o.order_id.length;
    for (uint32_t j = o.items_begin; j < o.items_end; ++j) {
      pid += b.items[j].product_id.length;
      sid += b.items[j].seller_id.length;
    }
  }
  Utf8Writer order_id(&c[0], n, oid), product_id(&c[2], n, pid), seller_id(&c[3], n, sid);
  c[1].values.reserve(n * 4);
  c[5].values.reserve(n * 16);
  c[6].values.reserve(n * 16);
  TimestampWriter shipping(&c[4], n);
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    for (uint32_t j = o.items_begin; j < o.items_end; ++j) {
      const ItemView& it = b.items[j];
      order_id.append(b.str(o.order_id), o.order_id.length);
      put<int32_t>(&c[1], static_cast<int32_t>(it.order_item_id));
      product_id.append(b.str(it.product_id), it.product_id.length);
      seller_id.append(b.str(it.seller_id), it.seller_id.length);
      shipping.append(it.shipping_limit_date);
      put_decimal(&c[5], it.price_cents);
      put_decimal(&c[6], it.freight_value_cents);
    }
  }
  shipping.finish();
  fill_lineage(&c[7], is_bronze(id), b, rows, n,
               [](const OrderView& o) { return static_cast<size_t>(o.items_end - o.items_begin); });
  t->num_rows = static_cast<int64_t>(n);
  return t;
}

std::shared_ptr<Table> encode_payments(const BatchView& b, const std::vector<uint32_t>& rows, TableId id) {
  auto t = new_table(id);
  Column* c = t->columns.data();
  size_t n = 0, oid = 0;
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    n += o.payments_end - o.payments_begin;
    oid += size_t{o.payments_end - o.payments_begin} * o.order_id.length;
  }
  Utf8Writer order_id(&c[0], n, oid), type(&c[2], n, n * 11);
  c[1].values.reserve(n * 4);
  c[3].values.reserve(n * 4);
  c[4].values.reserve(n * 16);
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    for (uint32_t j = o.payments_begin; j < o.payments_end; ++j) {
      const PaymentView& p = b.payments[j];
      order_id.append(b.str(o.order_id), o.order_id.length);
      put<int32_t>(&c[1], static_cast<int32_t>(p.payment_sequential));
      type.append(kPaymentType[p.payment_type].text, kPaymentType[p.payment_type].length);
      put<int32_t>(&c[3], static_cast<int32_t>(p.payment_installments));
      put_decimal(&c[4], p.payment_value_cents);
    }
  }
  fill_lineage(&c[5], is_bronze(id), b, rows, n,
               [](const OrderView& o) { return static_cast<size_t>(o.payments_end - o.payments_begin); });
  t->num_rows = static_cast<int64_t>(n);
  return t;
}

std::shared_ptr<Table> encode_customers(const BatchView& b, const std::vector<uint32_t>& rows, TableId id) {
  auto t = new_table(id);
  Column* c = t->columns.data();
  size_t n = 0, bytes[5] = {0, 0, 0, 0, 0};
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    if (!o.customer.present) continue;
    ++n;
    bytes[0] += o.customer_id.length;
    bytes[1] += o.customer.customer_unique_id.length;
    bytes[2] += o.customer.customer_zip_code_prefix.length;
    bytes[3] += o.customer.customer_city.length;
    bytes[4] += o.customer.customer_state.length;
  }
  Utf8Writer customer_id(&c[0], n, bytes[0]), unique_id(&c[1], n, bytes[1]), zip(&c[2], n, bytes[2]),
      city(&c[3], n, bytes[3]), state(&c[4], n, bytes[4]);
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    const CustomerView& cu = o.customer;
    if (!cu.present) continue;
    customer_id.append(b.str(o.customer_id), o.customer_id.length);
    unique_id.append(b.str(cu.customer_unique_id), cu.customer_unique_id.length);
    zip.append(b.str(cu.customer_zip_code_prefix), cu.customer_zip_code_prefix.length);
    city.append(b.str(cu.customer_city), cu.customer_city.length);
    state.append(b.str(cu.customer_state), cu.customer_state.length);
  }
  fill_lineage(&c[5], is_bronze(id), b, rows, n,
               [](const OrderView& o) { return static_cast<size_t>(o.customer.present ? 1 : 0); });
  t->num_rows = static_cast<int64_t>(n);
  return t;
}

std::shared_ptr<Table> encode_spans(const BatchView& b, const std::vector<uint32_t>& rows) {
  auto t = new_table(TableId::kOrderSpans);
  Column* c = t->columns.data();
  for (int k = 0; k < 10; ++k) c[k].values.reserve(rows.size() * (k == 0 || k == 6 || k == 8 ? 8 : 4));
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    put<int64_t>(&c[0], o.bytes.offset);
    put<int32_t>(&c[1], static_cast<int32_t>(o.bytes.length));
    put<int32_t>(&c[2], kafka_key_hash(b.data + o.order_id.offset, o.order_id.length));
    put<int32_t>(&c[3], static_cast<int32_t>(o.items_end - o.items_begin));
    put<int32_t>(&c[4], static_cast<int32_t>(o.payments_end - o.payments_begin));
    put<int32_t>(&c[5], o.customer.present ? 1 : 0);
    // The Kafka record's event_id header and key, as slices of the request.
    put<int64_t>(&c[6], o.event_id.offset);
    put<int32_t>(&c[7], static_cast<int32_t>(o.event_id.length));
    put<int64_t>(&c[8], o.order_id.offset);
    put<int32_t>(&c[9], static_cast<int32_t>(o.order_id.length));
  }
  t->num_rows = static_cast<int64_t>(rows.size());
  return t;
}

std::shared_ptr<Table> encode_rejects(const BatchView& b, const std::vector<Rejection>& rejections) {
  auto t = new_table(TableId::kRejects);
  Column* c = t->columns.data();
  const size_t n = rejections.size();
  Utf8Writer event_id(&c[1], n, 0), reason(&c[2], n, 0), message(&c[3], n, 0);
  for (const Rejection& r : rejections) {
    const OrderView& o = b.orders[r.index];
    put<int32_t>(&c[0], static_cast<int32_t>(r.index));
    event_id.append(b.str(o.event_id), o.event_id.length);
    const char* reason_text = reason_name(r.reason);
    reason.append(reason_text, std::strlen(reason_text));
    message.append(r.message.data(), r.message.size());
    put<int64_t>(&c[4], o.bytes.offset);
    put<int32_t>(&c[5], static_cast<int32_t>(o.bytes.length));
  }
  t->num_rows = static_cast<int64_t>(n);
  return t;
}

std::shared_ptr<Table> encode_child_counts(const BatchView& b, const std::vector<uint32_t>& rows) {
  auto t = new_table(TableId::kChildCounts);
  Column* c = t->columns.data();
  for (int k = 0; k < 3; ++k) c[k].values.reserve(rows.size() * 4);
  for (uint32_t i : rows) {
    const OrderView& o = b.orders[i];
    put<int32_t>(&c[0], static_cast<int32_t>(o.items_end - o.items_begin));
    put<int32_t>(&c[1], static_cast<int32_t>(o.payments_end - o.payments_begin));
    put<int32_t>(&c[2], o.customer.present ? 1 : 0);
  }
  t->num_rows = static_cast<int64_t>(rows.size());
  return t;
}

// ------------------------------------------------------------------ export

const char* format_of(ColumnType type) {
  switch (type) {
    case CT::kUtf8: return "u";
    case CT::kInt32: return "i";
    case CT::kInt64: return "l";
    case CT::kTimestampUs: return "tsu:UTC";
    case CT::kDecimal12_2: return "d:12,2";
    case CT::kBinary: return "z";
  }
  return "n";
}

// The schema's children live in one allocation owned by the parent; the
// strings they point to are static.
struct SchemaPrivate {
  std::vector<ArrowSchema> children;
  std::vector<ArrowSchema*> child_ptrs;
};

void release_child_schema(ArrowSchema* s) { s->release = nullptr; }

void release_schema(ArrowSchema* s) {
  if (s->release == nullptr) return;
  auto* priv = static_cast<SchemaPrivate*>(s->private_data);
  for (ArrowSchema& child : priv->children) {
    if (child.release != nullptr) child.release(&child);
  }
  delete priv;
  s->release = nullptr;
}

// Each exported array, parent or child, owns one of these: a reference to
// the table plus the pointer arrays the C structures point into.
struct ArrayPrivate {
  std::shared_ptr<const Table> table;
  const void* buffers[3] = {nullptr, nullptr, nullptr};
  std::vector<ArrowArray*> children;
};

void release_array(ArrowArray* a) {
  if (a->release == nullptr) return;
  auto* priv = static_cast<ArrayPrivate*>(a->private_data);
  for (ArrowArray* child : priv->children) {
    if (child->release != nullptr) child->release(child);
    delete child;
  }
  delete priv;
  a->release = nullptr;
}

void export_column(const std::shared_ptr<const Table>& table, int index, ArrowArray* out) {
  const Column& col = table->columns[index];
  const ColumnType type = table_def(table->id).fields[index].type;
  auto* priv = new ArrayPrivate;
  priv->table = table;
  priv->buffers[0] = col.validity.size() > 0 ? col.validity.data() : nullptr;
  priv->buffers[1] = col.values.data();
  priv->buffers[2] = col.data.data();
  // A zero-row column has never allocated; importers may still read its
  // (empty) buffers, so point them at something real.
  static const uint8_t kEmpty[16] = {0};
  if (priv->buffers[1] == nullptr) priv->buffers[1] = kEmpty;
  if (priv->buffers[2] == nullptr) priv->buffers[2] = kEmpty;
  *out = ArrowArray{};
  out->length = table->num_rows;
  out->null_count = col.null_count;
  out->offset = 0;
  out->n_buffers = type == CT::kUtf8 || type == CT::kBinary ? 3 : 2;
  out->n_children = 0;
  out->buffers = priv->buffers;
  out->children = nullptr;
  out->dictionary = nullptr;
  out->release = release_array;
  out->private_data = priv;
}

}  // namespace

void Buffer::grow(size_t need) {
  size_t cap = cap_ < 64 ? 64 : cap_;
  while (cap < need) cap *= 2;
  void* p = std::realloc(data_, cap);
  if (p == nullptr) throw std::bad_alloc();
  data_ = static_cast<uint8_t*>(p);
  cap_ = cap;
}

const TableDef& table_def(TableId table) { return kTables[static_cast<size_t>(table)]; }

TableId table_by_name(const char* name) {
  for (size_t i = 0; i < static_cast<size_t>(TableId::kCount_); ++i) {
    if (std::strcmp(kTables[i].name, name) == 0) return static_cast<TableId>(i);
  }
  return TableId::kCount_;
}

Code check_encodable(const BatchView& batch, const std::vector<Verdict>& verdicts, Error* error) {
  uint64_t orders = 0, child_rows = 0, child_order_id_bytes = 0;
  for (uint32_t i = 0; i < verdicts.size(); ++i) {
    if (verdicts[i] != Verdict::kAccept) continue;
    ++orders;
    const OrderView& o = batch.orders[i];
    const uint64_t k = std::max(o.items_end - o.items_begin, o.payments_end - o.payments_begin);
    child_rows += k;
    child_order_id_bytes += k * o.order_id.length;
  }
  const uint64_t max_rows = std::max(orders, child_rows);
  const uint64_t lineage_bytes = max_rows * std::max(batch.batch_id.length, batch.source.length);
  if (KS_UNLIKELY(lineage_bytes > INT32_MAX || child_order_id_bytes > INT32_MAX)) {
    error->code = Code::kBatchTooLarge;
    error->offset = -1;
    error->message = "batch would build a column of more than 2 GiB (" + std::to_string(max_rows) +
                     " rows repeating batch_id, source and order_id); send it as smaller batches";
    return error->code;
  }
  return Code::kOk;
}

void encode_tables(const BatchView& batch, const std::vector<Verdict>& verdicts,
                   const std::vector<Rejection>& rejections, bool bronze_tables, EncodedBatch* out) {
  std::vector<uint32_t> rows;
  rows.reserve(verdicts.size());
  for (uint32_t i = 0; i < verdicts.size(); ++i) {
    if (verdicts[i] == Verdict::kAccept) rows.push_back(i);
  }
  auto& t = out->tables;
  if (bronze_tables) {
    t[static_cast<size_t>(TableId::kOrders)] = encode_orders(batch, rows, TableId::kOrders);
    t[static_cast<size_t>(TableId::kOrderItems)] = encode_items(batch, rows, TableId::kOrderItems);
    t[static_cast<size_t>(TableId::kOrderPayments)] = encode_payments(batch, rows, TableId::kOrderPayments);
    t[static_cast<size_t>(TableId::kCustomers)] = encode_customers(batch, rows, TableId::kCustomers);
  }
  t[static_cast<size_t>(TableId::kOrderSpans)] = encode_spans(batch, rows);
  t[static_cast<size_t>(TableId::kRejects)] = encode_rejects(batch, rejections);
}

void encode_bronze_tables(const BatchView& batch, const std::vector<uint32_t>& rows, BronzeTables* out) {
  out->orders = encode_orders(batch, rows, TableId::kBronzeOrders);
  out->order_items = encode_items(batch, rows, TableId::kBronzeOrderItems);
  out->order_payments = encode_payments(batch, rows, TableId::kBronzeOrderPayments);
  out->customers = encode_customers(batch, rows, TableId::kBronzeCustomers);
  out->child_counts = encode_child_counts(batch, rows);
}

std::shared_ptr<const Table> encode_quarantine(const std::vector<QuarantineRow>& rows) {
  auto t = new_table(TableId::kQuarantine);
  Column* c = t->columns.data();
  const size_t n = rows.size();
  size_t bytes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (const QuarantineRow& r : rows) {
    bytes[0] += r.batch_id.size();
    bytes[1] += r.source.size();
    bytes[2] += r.producer.size();
    bytes[4] += r.event_id.size();
    bytes[5] += r.reason.size();
    bytes[6] += r.message.size();
    bytes[7] += r.raw.size();
  }
  Utf8Writer batch_id(&c[0], n, bytes[0]), source(&c[1], n, bytes[1]), producer(&c[2], n, bytes[2]),
      event_id(&c[4], n, bytes[4]), reason(&c[5], n, bytes[5]), message(&c[6], n, bytes[6]),
      raw(&c[7], n, bytes[7]);  // binary: the same layout
  zero_bitmap(&c[2], n);
  c[3].values.reserve(n * 4);
  c[8].values.reserve(n * 8);
  for (size_t row = 0; row < n; ++row) {
    const QuarantineRow& r = rows[row];
    batch_id.append(r.batch_id.data(), r.batch_id.size());
    source.append(r.source.data(), r.source.size());
    producer.append(r.producer.data(), r.producer.size());
    if (r.has_producer) {
      set_valid(&c[2], row, 1);
    } else {
      ++c[2].null_count;
    }
    put<int32_t>(&c[3], r.index);
    event_id.append(r.event_id.data(), r.event_id.size());
    reason.append(r.reason.data(), r.reason.size());
    message.append(r.message.data(), r.message.size());
    raw.append(r.raw.data(), r.raw.size());
    put<int64_t>(&c[8], r.received_at_us);
  }
  if (c[2].null_count == 0) c[2].validity.reset();
  t->num_rows = static_cast<int64_t>(n);
  return t;
}

void export_schema(TableId table, ArrowSchema* out) {
  const TableDef& def = table_def(table);
  auto* priv = new SchemaPrivate;
  priv->children.resize(def.num_fields);
  for (int i = 0; i < def.num_fields; ++i) {
    ArrowSchema& c = priv->children[i];
    c = ArrowSchema{};
    c.format = format_of(def.fields[i].type);
    c.name = def.fields[i].name;
    c.flags = ARROW_FLAG_NULLABLE;
    c.release = release_child_schema;
    priv->child_ptrs.push_back(&c);
  }
  *out = ArrowSchema{};
  out->format = "+s";
  out->name = "";
  out->n_children = def.num_fields;
  out->children = priv->child_ptrs.data();
  out->release = release_schema;
  out->private_data = priv;
}

void export_table(const std::shared_ptr<const Table>& table, ArrowArray* out) {
  const TableDef& def = table_def(table->id);
  auto* priv = new ArrayPrivate;
  priv->table = table;
  for (int i = 0; i < def.num_fields; ++i) {
    auto* child = new ArrowArray;
    export_column(table, i, child);
    priv->children.push_back(child);
  }
  *out = ArrowArray{};
  out->length = table->num_rows;
  out->null_count = 0;
  out->offset = 0;
  out->n_buffers = 1;
  out->n_children = def.num_fields;
  out->buffers = priv->buffers;  // buffers[0], the struct's validity, is null
  out->children = priv->children.data();
  out->dictionary = nullptr;
  out->release = release_array;
  out->private_data = priv;
}

}  // namespace keystone
