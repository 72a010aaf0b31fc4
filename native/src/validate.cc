#include "keystone/validate.h"

#include <algorithm>
#include <string>
#include <utility>

namespace keystone {
namespace {

struct ReasonInfo {
  const char* name;
  const char* description;
};

constexpr ReasonInfo kReasons[] = {
    {"event_id_too_long", "event_id is longer than max_event_id_bytes (default 128)"},
    {"order_id_empty", "order_id is empty"},
    {"order_id_too_long", "order_id is longer than max_id_bytes (default 64)"},
    {"customer_id_empty", "customer_id is empty"},
    {"customer_id_too_long", "customer_id is longer than max_id_bytes (default 64)"},
    {"order_status_unspecified", "order_status is ORDER_STATUS_UNSPECIFIED"},
    {"order_status_unknown", "order_status is not a value of OrderStatus"},
    {"purchase_timestamp_missing", "order_purchase_timestamp is absent"},
    {"timestamp_nanos_out_of_range", "a timestamp's nanos are outside 0..999999999"},
    {"timestamp_out_of_range", "a timestamp lies outside the years min_year..max_year (default 2000..2100)"},
    {"item_id_zero", "order_item_id is 0 (it starts at 1)"},
    {"item_id_out_of_range", "order_item_id is more than 2147483647"},
    {"item_id_repeated", "two items of one order share an order_item_id"},
    {"text_too_long",
     "an item or customer string is longer than its limit (max_id_bytes for ids, max_text_bytes for other text)"},
    {"money_negative", "a price, freight value or payment value is negative"},
    {"money_out_of_range", "money is more than decimal(12,2) holds (9,999,999,999.99)"},
    {"payment_counter_out_of_range", "payment_sequential or payment_installments is more than 2147483647"},
    {"payment_type_unspecified", "payment_type is PAYMENT_TYPE_UNSPECIFIED"},
    {"payment_type_unknown", "payment_type is not a value of PaymentType"},
};
static_assert(sizeof(kReasons) / sizeof(kReasons[0]) == static_cast<size_t>(Reason::kCount_),
              "every Reason needs a name and a description");

constexpr int64_t kMaxCents = 999999999999;  // decimal(12,2) tops out at 9,999,999,999.99
constexpr uint32_t kMaxInt32 = 2147483647;
constexpr const char* kOrderTimestampNames[kOrderTimestampCount] = {
    "order_purchase_timestamp", "order_approved_at", "order_delivered_carrier_date", "order_delivered_customer_date",
    "order_estimated_delivery_date"};

// Checks one order. Rules run in a fixed order and the first that fails is
// the order's reason; messages are only built for orders that fail.
class OrderChecker {
 public:
  OrderChecker(const BatchView& batch, const ValidationOptions& options)
      : batch_(batch),
        options_(options),
        min_seconds_(year_start_seconds(options.min_year)),
        end_seconds_(year_start_seconds(options.max_year + 1)) {}

  // True when the order passes; otherwise fills reason_ and message_.
  bool check(const OrderView& o);

  Reason reason() const { return reason_; }
  std::string take_message() { return std::exchange(message_, {}); }

 private:
  bool text(Span s, uint32_t limit, const std::string& path);
  bool id(Span s, const char* path, Reason empty, Reason long_reason);
  bool timestamp(const Timestamp& ts, const std::string& path);
  bool money(int64_t cents, const std::string& path);
  bool counter(uint32_t value, const std::string& path, Reason reason);
  bool items(const OrderView& o);
  bool payments(const OrderView& o);
  KS_COLD bool reject(Reason reason, std::string message) {
    reason_ = reason;
    message_ = std::move(message);
    return false;
  }

  const BatchView& batch_;
  const ValidationOptions& options_;
  const int64_t min_seconds_;
  const int64_t end_seconds_;
  Reason reason_ = Reason::kCount_;
  std::string message_;
};

std::string too_long(const std::string& path, uint32_t length, uint32_t limit) {
  return path + " is " + std::to_string(length) + " bytes, more than the " + std::to_string(limit) + " allowed";
}

bool OrderChecker::id(Span s, const char* path, Reason empty, Reason long_reason) {
  if (KS_UNLIKELY(s.length == 0)) return reject(empty, std::string(path) + " is empty");
  if (KS_UNLIKELY(s.length > options_.max_id_bytes)) {
    return reject(long_reason, too_long(path, s.length, options_.max_id_bytes));
  }
  return true;
}

bool OrderChecker::text(Span s, uint32_t limit, const std::string& path) {
  if (KS_UNLIKELY(s.length > limit)) return reject(Reason::kTextTooLong, too_long(path, s.length, limit));
  return true;
}

bool OrderChecker::timestamp(const Timestamp& ts, const std::string& path) {
  if (!ts.present) return true;
  if (KS_UNLIKELY(ts.nanos < 0 || ts.nanos > 999999999)) {
    return reject(Reason::kTimestampNanosOutOfRange,
                  path + ".nanos is " + std::to_string(ts.nanos) + ", outside 0..999999999");
  }
  if (KS_UNLIKELY(ts.seconds < min_seconds_ || ts.seconds >= end_seconds_)) {
    return reject(Reason::kTimestampOutOfRange,
                  path + " is " + std::to_string(ts.seconds) + " seconds since the epoch, outside the years " +
                      std::to_string(options_.min_year) + ".." + std::to_string(options_.max_year));
  }
  return true;
}

bool OrderChecker::money(int64_t cents, const std::string& path) {
  if (KS_UNLIKELY(cents < 0)) {
    return reject(Reason::kMoneyNegative, path + " is " + std::to_string(cents) + "; money cannot be negative");
  }
  if (KS_UNLIKELY(cents > kMaxCents)) {
    return reject(Reason::kMoneyOutOfRange,
                  path + " is " + std::to_string(cents) + " cents, more than decimal(12,2) holds");
  }
  return true;
}

bool OrderChecker::counter(uint32_t value, const std::string& path, Reason reason) {
  if (KS_UNLIKELY(value > kMaxInt32)) {
    return reject(reason, path + " is " + std::to_string(value) + ", more than 2147483647");
  }
  return true;
}

// Paths of items and payments are only formatted when a check fails, so the
// happy path builds no strings: each check is guarded by a cheap test first.
bool OrderChecker::items(const OrderView& o) {
  const ItemView* items = batch_.items.data() + o.items_begin;
  const uint32_t n = o.items_end - o.items_begin;
  // Repeated ids: a quadratic scan is cheapest for the usual handful of
  // items; a sorted copy keeps a hostile 1,000-item order at n log n.
  std::vector<std::pair<uint32_t, uint32_t>> sorted;
  if (n > 16) {
    sorted.reserve(n);
    for (uint32_t i = 0; i < n; ++i) sorted.emplace_back(items[i].order_item_id, i);
    std::sort(sorted.begin(), sorted.end());
  }
  auto first_with_id = [&](uint32_t i) -> uint32_t {  // index of the first item with items[i]'s id
    const uint32_t want = items[i].order_item_id;
    if (n <= 16) {
      for (uint32_t j = 0; j < i; ++j) {
        if (items[j].order_item_id == want) return j;
      }
      return i;
    }
    auto it = std::lower_bound(sorted.begin(), sorted.end(), std::make_pair(want, 0u));
    return it->second;
  };
  for (uint32_t i = 0; i < n; ++i) {
    const ItemView& it = items[i];
    auto path = [i](const char* field) { return "items[" + std::to_string(i) + "]." + field; };
    if (KS_UNLIKELY(it.order_item_id == 0)) {
      return reject(Reason::kItemIdZero, path("order_item_id") + " is 0; order_item_id starts at 1");
    }
    if (KS_UNLIKELY(it.order_item_id > kMaxInt32)) {
      return counter(it.order_item_id, path("order_item_id"), Reason::kItemIdOutOfRange);
    }
    const uint32_t first = first_with_id(i);
    if (KS_UNLIKELY(first != i)) {
      return reject(Reason::kItemIdRepeated, path("order_item_id") + " " + std::to_string(it.order_item_id) +
                                                 " repeats items[" + std::to_string(first) + "]");
    }
    if (KS_UNLIKELY(it.product_id.length > options_.max_id_bytes)) {
      return text(it.product_id, options_.max_id_bytes, path("product_id"));
    }
    if (KS_UNLIKELY(it.seller_id.length > options_.max_id_bytes)) {
      return text(it.seller_id, options_.max_id_bytes, path("seller_id"));
    }
    const Timestamp& ts = it.shipping_limit_date;
    if (ts.present &&
        KS_UNLIKELY(ts.nanos < 0 || ts.nanos > 999999999 || ts.seconds < min_seconds_ || ts.seconds >= end_seconds_)) {
      return timestamp(ts, path("shipping_limit_date"));
    }
    if (KS_UNLIKELY(static_cast<uint64_t>(it.price_cents) > static_cast<uint64_t>(kMaxCents))) {
      return money(it.price_cents, path("price_cents"));
    }
    if (KS_UNLIKELY(static_cast<uint64_t>(it.freight_value_cents) > static_cast<uint64_t>(kMaxCents))) {
      return money(it.freight_value_cents, path("freight_value_cents"));
    }
  }
  return true;
}

bool OrderChecker::payments(const OrderView& o) {
  for (uint32_t j = 0, n = o.payments_end - o.payments_begin; j < n; ++j) {
    const PaymentView& p = batch_.payments[o.payments_begin + j];
    auto path = [j](const char* field) { return "payments[" + std::to_string(j) + "]." + field; };
    if (KS_UNLIKELY(p.payment_sequential > kMaxInt32)) {
      return counter(p.payment_sequential, path("payment_sequential"), Reason::kPaymentCounterOutOfRange);
    }
    if (KS_UNLIKELY(p.payment_installments > kMaxInt32)) {
      return counter(p.payment_installments, path("payment_installments"), Reason::kPaymentCounterOutOfRange);
    }
    if (KS_UNLIKELY(p.payment_type == 0)) {
      return reject(Reason::kPaymentTypeUnspecified, path("payment_type") + " is PAYMENT_TYPE_UNSPECIFIED");
    }
    if (KS_UNLIKELY(p.payment_type < 0 || p.payment_type > 5)) {
      return reject(Reason::kPaymentTypeUnknown,
                    path("payment_type") + " " + std::to_string(p.payment_type) + " is not a known PaymentType");
    }
    if (KS_UNLIKELY(static_cast<uint64_t>(p.payment_value_cents) > static_cast<uint64_t>(kMaxCents))) {
      return money(p.payment_value_cents, path("payment_value_cents"));
    }
  }
  return true;
}

bool OrderChecker::check(const OrderView& o) {
  if (KS_UNLIKELY(o.event_id.length > options_.max_event_id_bytes)) {
    return reject(Reason::kEventIdTooLong, too_long("event_id", o.event_id.length, options_.max_event_id_bytes));
  }
  if (!id(o.order_id, "order_id", Reason::kOrderIdEmpty, Reason::kOrderIdTooLong)) return false;
  if (!id(o.customer_id, "customer_id", Reason::kCustomerIdEmpty, Reason::kCustomerIdTooLong)) return false;
  if (KS_UNLIKELY(o.order_status == 0)) {
    return reject(Reason::kOrderStatusUnspecified, "order_status is ORDER_STATUS_UNSPECIFIED");
  }
  if (KS_UNLIKELY(o.order_status < 0 || o.order_status > 8)) {
    return reject(Reason::kOrderStatusUnknown,
                  "order_status " + std::to_string(o.order_status) + " is not a known OrderStatus");
  }
  if (KS_UNLIKELY(!o.timestamps[kPurchase].present)) {
    return reject(Reason::kPurchaseTimestampMissing, "order_purchase_timestamp is missing");
  }
  for (int k = 0; k < kOrderTimestampCount; ++k) {
    const Timestamp& ts = o.timestamps[k];
    if (ts.present &&
        KS_UNLIKELY(ts.nanos < 0 || ts.nanos > 999999999 || ts.seconds < min_seconds_ || ts.seconds >= end_seconds_)) {
      return timestamp(ts, kOrderTimestampNames[k]);
    }
  }
  if (!items(o) || !payments(o)) return false;
  const CustomerView& c = o.customer;
  if (c.present) {
    if (!text(c.customer_unique_id, options_.max_id_bytes, "customer.customer_unique_id") ||
        !text(c.customer_zip_code_prefix, options_.max_text_bytes, "customer.customer_zip_code_prefix") ||
        !text(c.customer_city, options_.max_text_bytes, "customer.customer_city") ||
        !text(c.customer_state, options_.max_text_bytes, "customer.customer_state")) {
      return false;
    }
  }
  return true;
}

}  // namespace

const char* reason_name(Reason reason) { return kReasons[static_cast<size_t>(reason)].name; }
const char* reason_description(Reason reason) { return kReasons[static_cast<size_t>(reason)].description; }

int64_t year_start_seconds(int32_t year) {
  // Days from 1970-01-01 to year-01-01 in the proleptic Gregorian calendar.
  const int64_t y = static_cast<int64_t>(year) - 1;
  const int64_t days = 365 * (y - 1969) + (y / 4 - 1969 / 4) - (y / 100 - 1969 / 100) + (y / 400 - 1969 / 400);
  return days * 86400;
}

Code validate_batch(const BatchView& batch, const ValidationOptions& options, Error* error) {
  return validate_lineage(batch.batch_id.length, batch.source.length, options, error);
}

Code validate_lineage(size_t batch_id_bytes, size_t source_bytes, const ValidationOptions& options, Error* error) {
  if (KS_UNLIKELY(batch_id_bytes == 0)) {
    error->code = Code::kBatchIdEmpty;
    error->offset = -1;
    error->message =
        "batch_id is empty; every batch needs an id of 1 to " + std::to_string(options.max_batch_id_bytes) + " bytes";
    return error->code;
  }
  if (KS_UNLIKELY(batch_id_bytes > options.max_batch_id_bytes)) {
    error->code = Code::kBatchIdTooLong;
    error->offset = -1;
    error->message = too_long("batch_id", static_cast<uint32_t>(std::min<size_t>(batch_id_bytes, UINT32_MAX)),
                              options.max_batch_id_bytes);
    return error->code;
  }
  if (KS_UNLIKELY(source_bytes > options.max_source_bytes)) {
    error->code = Code::kSourceTooLong;
    error->offset = -1;
    error->message =
        too_long("source", static_cast<uint32_t>(std::min<size_t>(source_bytes, UINT32_MAX)), options.max_source_bytes);
    return error->code;
  }
  return Code::kOk;
}

void validate_orders(const BatchView& batch, const ValidationOptions& options, std::vector<Verdict>* verdicts,
                     std::vector<Rejection>* rejections) {
  validate_orders(batch, options, 0, verdicts, rejections);
}

void validate_orders(const BatchView& batch, const ValidationOptions& options, size_t first,
                     std::vector<Verdict>* verdicts, std::vector<Rejection>* rejections) {
  OrderChecker checker(batch, options);
  const size_t n = batch.orders.size();
  verdicts->resize(n);
  for (size_t i = first; i < n; ++i) {
    if (KS_LIKELY(checker.check(batch.orders[i]))) {
      (*verdicts)[i] = Verdict::kAccept;
    } else {
      (*verdicts)[i] = Verdict::kReject;
      rejections->push_back(Rejection{static_cast<uint32_t>(i), checker.reason(), checker.take_message()});
    }
  }
}

}  // namespace keystone
