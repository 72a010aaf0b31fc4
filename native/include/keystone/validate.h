// Stage 2, validate: batch-level rules refuse the whole batch; order-level
// rules reject one order and let the rest of the batch go on. Strictness is
// the ValidationOptions value, not checks scattered through the code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "keystone/decode.h"
#include "keystone/status.h"

namespace keystone {

// Why one order was rejected. The names (reason_name) are a public, stable
// contract: they reach clients in RecordError.reason and the dead-letter topic.
enum class Reason : uint8_t {
  kEventIdTooLong,            // event_id longer than max_event_id_bytes
  kOrderIdEmpty,              // order_id is empty
  kOrderIdTooLong,            // order_id longer than max_id_bytes
  kCustomerIdEmpty,           // customer_id is empty
  kCustomerIdTooLong,         // customer_id longer than max_id_bytes
  kOrderStatusUnspecified,    // order_status is ORDER_STATUS_UNSPECIFIED
  kOrderStatusUnknown,        // order_status is not a value of OrderStatus
  kPurchaseTimestampMissing,  // order_purchase_timestamp is absent
  kTimestampNanosOutOfRange,  // a timestamp's nanos outside 0..999,999,999
  kTimestampOutOfRange,       // a timestamp outside the years min_year..max_year
  kItemIdZero,                // order_item_id is 0
  kItemIdOutOfRange,          // order_item_id does not fit Bronze's int32
  kItemIdRepeated,            // two items of one order share an order_item_id
  kTextTooLong,               // an item or customer string longer than its limit
  kMoneyNegative,             // a price, freight value or payment value below zero
  kMoneyOutOfRange,           // money beyond decimal(12,2): more than 9,999,999,999.99
  kPaymentCounterOutOfRange,  // payment_sequential or payment_installments beyond int32
  kPaymentTypeUnspecified,    // payment_type is PAYMENT_TYPE_UNSPECIFIED
  kPaymentTypeUnknown,        // payment_type is not a value of PaymentType
  kCount_,
};

const char* reason_name(Reason reason);
const char* reason_description(Reason reason);

struct ValidationOptions {
  uint32_t max_batch_id_bytes = 128;
  uint32_t max_source_bytes = 128;  // source is repeated on every Bronze row, so it stays short
  uint32_t max_event_id_bytes = 128;
  uint32_t max_id_bytes = 64;     // order_id, customer_id, product_id, seller_id, customer_unique_id
  uint32_t max_text_bytes = 256;  // customer zip code prefix, city and state
  int32_t min_year = 2000;        // timestamps from min_year-01-01T00:00:00Z ...
  int32_t max_year = 2100;        // ... to max_year-12-31T23:59:59.999999999Z
};

// Seconds since the Unix epoch at the start of January 1st of `year`, UTC.
int64_t year_start_seconds(int32_t year);

// What happens to each order of a batch.
enum class Verdict : uint8_t { kAccept, kReject, kDuplicate };

struct Rejection {
  uint32_t index;  // position in OrderBatch.orders
  Reason reason;
  std::string message;
};

// Batch-level rules (batch_id, source). On failure fills *error (offset -1).
Code validate_batch(const BatchView& batch, const ValidationOptions& options, Error* error);
// The same rules on the lengths alone, for lineage that arrives without its
// batch (a record read back from Kafka carries them as headers).
Code validate_lineage(size_t batch_id_bytes, size_t source_bytes, const ValidationOptions& options, Error* error);

// Order-level rules: sets verdicts[i] to kAccept or kReject for every order
// and appends one Rejection per rejected order, in index order.
void validate_orders(const BatchView& batch, const ValidationOptions& options, std::vector<Verdict>* verdicts,
                     std::vector<Rejection>* rejections);
// The same for orders [first, end) only, leaving verdicts before `first` as
// they are: a view filled a few orders at a time is checked as it grows.
void validate_orders(const BatchView& batch, const ValidationOptions& options, size_t first,
                     std::vector<Verdict>* verdicts, std::vector<Rejection>* rejections);

}  // namespace keystone
