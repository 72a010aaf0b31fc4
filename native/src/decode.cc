#include "keystone/decode.h"

#include <string>

namespace keystone {
namespace {

using wire::Reader;

// The message types of the schema, for naming the path of an error.
enum class Msg : uint8_t { kBatch, kOrder, kItem, kPayment, kCustomer, kTimestamp };

// One level of the path being decoded: which message, which field of it is
// being read (0 between fields), and the element index for repeated fields.
struct Level {
  Msg msg = Msg::kBatch;
  uint32_t field = 0;
  uint32_t index = 0;
};

// The deepest path in the schema: OrderBatch.orders[i].items[j].shipping_limit_date.seconds
constexpr int kMaxDepth = 4;

// The name of a field, or null for one the table does not know.
template <size_t N>
const char* name_in(const char* const (&table)[N], uint32_t field) {
  return field < N ? table[field] : nullptr;
}

const char* field_name(Msg msg, uint32_t field) {
  static const char* const kBatch[] = {nullptr, "batch_id", "source", "orders"};
  static const char* const kOrder[] = {nullptr,
                                       "event_id",
                                       "order_id",
                                       "customer_id",
                                       "order_status",
                                       "order_purchase_timestamp",
                                       "order_approved_at",
                                       "order_delivered_carrier_date",
                                       "order_delivered_customer_date",
                                       "order_estimated_delivery_date",
                                       "items",
                                       "payments",
                                       "customer"};
  static const char* const kItem[] = {
      nullptr, "order_item_id", "product_id", "seller_id", "shipping_limit_date", "price_cents", "freight_value_cents"};
  static const char* const kPayment[] = {nullptr, "payment_sequential", "payment_type", "payment_installments",
                                         "payment_value_cents"};
  static const char* const kCustomer[] = {nullptr, "customer_unique_id", "customer_zip_code_prefix", "customer_city",
                                          "customer_state"};
  static const char* const kTimestamp[] = {nullptr, "seconds", "nanos"};
  switch (msg) {
    case Msg::kBatch: return name_in(kBatch, field);
    case Msg::kOrder: return name_in(kOrder, field);
    case Msg::kItem: return name_in(kItem, field);
    case Msg::kPayment: return name_in(kPayment, field);
    case Msg::kCustomer: return name_in(kCustomer, field);
    case Msg::kTimestamp: return name_in(kTimestamp, field);
  }
  return nullptr;
}

bool is_repeated(Msg msg, uint32_t field) {
  return (msg == Msg::kBatch && field == 3) || (msg == Msg::kOrder && (field == 10 || field == 11));
}

// Propagates a reader failure, recording the path while it is still known.
#define KS_READ(expr)                         \
  do {                                        \
    Code ks_code_ = (expr);                   \
    if (KS_UNLIKELY(ks_code_ != Code::kOk)) { \
      return fail(ks_code_);                  \
    }                                         \
  } while (0)

class Decoder {
 public:
  Decoder(const uint8_t* data, size_t size, const DecodeLimits& limits, BatchView* out, Error* error)
      : r_(data, size), limits_(limits), out_(out), error_(error) {}
  // A decoder of the one Order at data[order.offset, +order.length): errors
  // count from the Order's first byte and name paths from the Order.
  Decoder(const uint8_t* data, size_t size, Span order, const DecodeLimits& limits, BatchView* out, Error* error)
      : r_(data, data + order.offset, data + order.offset + order.length, data + size),
        limits_(limits),
        out_(out),
        error_(error),
        root_(Msg::kOrder),
        origin_(order.offset) {}

  Code batch();
  Code order(OrderView* o);

 private:
  Code item(ItemView* it);
  Code payment(PaymentView* p);
  Code customer(CustomerView* c);
  Code timestamp(Timestamp* ts);
  Code string(uint32_t wire_type, Span* out);
  Code varint(uint32_t wire_type, uint64_t* out);
  Code uint32_field(uint32_t wire_type, uint32_t* out);
  Code int32_field(uint32_t wire_type, int32_t* out);
  Code int64_field(uint32_t wire_type, int64_t* out);
  Code unknown(uint32_t field, uint32_t wire_type);
  template <typename OnField>
  Code fields(Msg msg, OnField on_field);
  // Reads a nested message of the field just tagged with `decode`, which
  // runs with the reader narrowed to that message.
  template <typename Fn>
  Code message(uint32_t wire_type, Span* span, Fn decode) {
    if (KS_UNLIKELY(wire_type != wire::kLen)) return fail(r_.wrong_wire_type());
    const uint8_t* saved_end;
    KS_READ(r_.enter(span, &saved_end));
    KS_TRY(decode());
    r_.leave(saved_end);
    return Code::kOk;
  }

  Level& enter(Msg msg) {
    Level& lv = path_[++depth_];
    lv.msg = msg;
    lv.field = 0;
    return lv;
  }

  KS_COLD Code fail(Code code) { return fail_at(code, r_.fail_offset(), r_.fail_what()); }
  KS_COLD Code fail_at(Code code, uint32_t offset, const char* what);
  std::string path() const;

  Reader r_;
  const DecodeLimits& limits_;
  BatchView* out_;
  Error* error_;
  Level path_[kMaxDepth + 1];
  int depth_ = -1;          // index of the innermost level in path_
  Msg root_ = Msg::kBatch;  // the message decoding started from
  uint32_t origin_ = 0;     // where root_ starts in the buffer: error offsets count from here
};

std::string Decoder::path() const {
  std::string p;
  for (int d = 0; d <= depth_; ++d) {
    const Level& lv = path_[d];
    if (lv.field == 0) break;
    const char* name = field_name(lv.msg, lv.field);
    if (!p.empty()) p += '.';
    p += name ? name : "field " + std::to_string(lv.field);
    if (is_repeated(lv.msg, lv.field)) p += "[" + std::to_string(lv.index) + "]";
  }
  if (p.empty()) return root_ == Msg::kOrder ? "Order" : "OrderBatch";
  return p;
}

Code Decoder::fail_at(Code code, uint32_t offset, const char* what) {
  offset -= origin_;
  error_->code = code;
  error_->offset = offset;
  error_->message = std::string(what) + " at byte " + std::to_string(offset) + " in " + path();
  return code;
}

Code Decoder::string(uint32_t wire_type, Span* out) {
  if (KS_UNLIKELY(wire_type != wire::kLen)) return fail(r_.wrong_wire_type());
  KS_READ(r_.len(out));
  if (KS_UNLIKELY(!wire::valid_utf8(r_.base() + out->offset, out->length))) {
    return fail_at(Code::kInvalidUtf8, out->offset, "invalid UTF-8 in a string starting");
  }
  return Code::kOk;
}

Code Decoder::varint(uint32_t wire_type, uint64_t* out) {
  if (KS_UNLIKELY(wire_type != wire::kVarint)) return fail(r_.wrong_wire_type());
  KS_READ(r_.varint(out));
  return Code::kOk;
}

// The loop every message shares: read a tag, record it in the path, let
// `on_field(field, wire_type, level)` take it (known fields) or skip it.
template <typename OnField>
Code Decoder::fields(Msg msg, OnField on_field) {
  Level& lv = enter(msg);
  while (!r_.at_end()) {
    lv.field = 0;
    uint32_t f = 0, wt = 0;
    KS_READ(r_.tag(&f, &wt));
    lv.field = f;
    KS_TRY(on_field(f, wt, lv));
  }
  --depth_;
  return Code::kOk;
}

Code Decoder::unknown(uint32_t field, uint32_t wire_type) {
  KS_READ(r_.skip(field, wire_type));
  return Code::kOk;
}

// Varint fields keep protobuf's conversions: uint32 and enums take the low
// 32 bits (enums and int32 as signed), int64 the two's complement.
Code Decoder::uint32_field(uint32_t wire_type, uint32_t* out) {
  uint64_t v;
  KS_TRY(varint(wire_type, &v));
  *out = static_cast<uint32_t>(v);
  return Code::kOk;
}

Code Decoder::int32_field(uint32_t wire_type, int32_t* out) {
  uint64_t v;
  KS_TRY(varint(wire_type, &v));
  *out = static_cast<int32_t>(static_cast<uint32_t>(v));
  return Code::kOk;
}

Code Decoder::int64_field(uint32_t wire_type, int64_t* out) {
  uint64_t v;
  KS_TRY(varint(wire_type, &v));
  *out = static_cast<int64_t>(v);
  return Code::kOk;
}

Code Decoder::batch() {
  return fields(Msg::kBatch, [&](uint32_t f, uint32_t wt, Level& lv) {
    switch (f) {
      case 1: return string(wt, &out_->batch_id);
      case 2: return string(wt, &out_->source);
      case 3: {
        lv.index = static_cast<uint32_t>(out_->orders.size());
        if (KS_UNLIKELY(lv.index >= limits_.max_orders)) {
          return fail_at(Code::kTooManyOrders, r_.tag_offset(), "more orders than max_orders_per_batch, starting");
        }
        OrderView* o = &out_->orders.emplace_back();
        return message(wt, &o->bytes, [&] { return order(o); });
      }
      default: return unknown(f, wt);
    }
  });
}

Code Decoder::order(OrderView* o) {
  std::vector<ItemView>& items = out_->items;
  std::vector<PaymentView>& payments = out_->payments;
  o->items_begin = static_cast<uint32_t>(items.size());
  o->payments_begin = static_cast<uint32_t>(payments.size());
  Span s;
  KS_TRY(fields(Msg::kOrder, [&](uint32_t f, uint32_t wt, Level& lv) {
    switch (f) {
      case 1: return string(wt, &o->event_id);
      case 2: return string(wt, &o->order_id);
      case 3: return string(wt, &o->customer_id);
      case 4: return int32_field(wt, &o->order_status);
      case 5:
      case 6:
      case 7:
      case 8:
      case 9: return message(wt, &s, [&] { return timestamp(&o->timestamps[f - 5]); });
      case 10:
        lv.index = static_cast<uint32_t>(items.size()) - o->items_begin;
        if (KS_UNLIKELY(lv.index >= limits_.max_items_per_order)) {
          return fail_at(Code::kTooManyItems, r_.tag_offset(), "more items than max_items_per_order, starting");
        }
        return message(wt, &s, [&] { return item(&items.emplace_back()); });
      case 11:
        lv.index = static_cast<uint32_t>(payments.size()) - o->payments_begin;
        if (KS_UNLIKELY(lv.index >= limits_.max_payments_per_order)) {
          return fail_at(Code::kTooManyPayments, r_.tag_offset(),
                         "more payments than max_payments_per_order, starting");
        }
        return message(wt, &s, [&] { return payment(&payments.emplace_back()); });
      case 12: return message(wt, &s, [&] { return customer(&o->customer); });
      default: return unknown(f, wt);
    }
  }));
  o->items_end = static_cast<uint32_t>(items.size());
  o->payments_end = static_cast<uint32_t>(payments.size());
  return Code::kOk;
}

Code Decoder::item(ItemView* it) {
  Span s;
  return fields(Msg::kItem, [&](uint32_t f, uint32_t wt, Level&) {
    switch (f) {
      case 1: return uint32_field(wt, &it->order_item_id);
      case 2: return string(wt, &it->product_id);
      case 3: return string(wt, &it->seller_id);
      case 4: return message(wt, &s, [&] { return timestamp(&it->shipping_limit_date); });
      case 5: return int64_field(wt, &it->price_cents);
      case 6: return int64_field(wt, &it->freight_value_cents);
      default: return unknown(f, wt);
    }
  });
}

Code Decoder::payment(PaymentView* p) {
  return fields(Msg::kPayment, [&](uint32_t f, uint32_t wt, Level&) {
    switch (f) {
      case 1: return uint32_field(wt, &p->payment_sequential);
      case 2: return int32_field(wt, &p->payment_type);
      case 3: return uint32_field(wt, &p->payment_installments);
      case 4: return int64_field(wt, &p->payment_value_cents);
      default: return unknown(f, wt);
    }
  });
}

// A customer or timestamp sent in several pieces merges: each piece only
// overwrites the fields it carries.
Code Decoder::customer(CustomerView* c) {
  c->present = true;
  return fields(Msg::kCustomer, [&](uint32_t f, uint32_t wt, Level&) {
    switch (f) {
      case 1: return string(wt, &c->customer_unique_id);
      case 2: return string(wt, &c->customer_zip_code_prefix);
      case 3: return string(wt, &c->customer_city);
      case 4: return string(wt, &c->customer_state);
      default: return unknown(f, wt);
    }
  });
}

Code Decoder::timestamp(Timestamp* ts) {
  ts->present = true;
  return fields(Msg::kTimestamp, [&](uint32_t f, uint32_t wt, Level&) {
    switch (f) {
      case 1: return int64_field(wt, &ts->seconds);
      case 2: return int32_field(wt, &ts->nanos);
      default: return unknown(f, wt);
    }
  });
}

}  // namespace

void BatchView::clear() {
  data = nullptr;
  size = 0;
  batch_id = Span();
  source = Span();
  orders.clear();
  items.clear();
  payments.clear();
  lineage.clear();
}

Code decode_batch(const uint8_t* data, size_t size, const DecodeLimits& limits, BatchView* out, Error* error) {
  out->clear();
  out->data = data;
  out->size = size;
  Decoder decoder(data, size, limits, out, error);
  return decoder.batch();
}

Code decode_order(Span order, const DecodeLimits& limits, BatchView* out, Error* error) {
  const size_t items = out->items.size(), payments = out->payments.size();
  OrderView* o = &out->orders.emplace_back();
  o->bytes = order;
  Decoder decoder(out->data, out->size, order, limits, out, error);
  const Code code = decoder.order(o);
  if (KS_UNLIKELY(code != Code::kOk)) {
    out->orders.pop_back();
    out->items.resize(items);
    out->payments.resize(payments);
  }
  return code;
}

bool peek_batch_id(const uint8_t* data, size_t size, Span* batch_id) {
  if (size > UINT32_MAX) return false;
  Reader r(data, size);
  bool found = false;
  while (!r.at_end()) {
    uint32_t field = 0, wire_type = 0;
    if (r.tag(&field, &wire_type) != Code::kOk) return false;
    if (field == 1 && wire_type == wire::kLen) {
      if (r.len(batch_id) != Code::kOk) return false;
      found = true;
    } else if (r.skip(field, wire_type) != Code::kOk) {
      return false;
    }
  }
  return found && wire::valid_utf8(data + batch_id->offset, batch_id->length);
}

}  // namespace keystone
