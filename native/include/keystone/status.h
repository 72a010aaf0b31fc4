// Error codes, the Error record and Result<T>: errors are values inside the
// core and become exceptions only at the Python boundary (bindings/module.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#if defined(__GNUC__)
#define KS_LIKELY(x) __builtin_expect(!!(x), 1)
#define KS_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define KS_COLD __attribute__((cold, noinline))
#else
#define KS_LIKELY(x) (x)
#define KS_UNLIKELY(x) (x)
#define KS_COLD
#endif

namespace keystone {

// Why a whole batch is refused. The names (code_name) are a public, stable
// contract: they reach clients as InvalidBatch.code.
enum class Code : uint8_t {
  kOk = 0,
  kTruncated,           // input ends inside a tag, varint or fixed-width value
  kVarintTooLong,       // the 10th byte of a varint still has its continuation bit
  kBadWireType,         // wire type 6/7, a known field with the wrong wire type, or a stray end-group
  kInvalidFieldNumber,  // field number 0, or a tag wider than 32 bits
  kLengthPastEnd,       // a length-delimited field declares more bytes than remain
  kInvalidUtf8,         // a string field that is not valid UTF-8
  kNestingTooDeep,      // unknown groups nested deeper than kMaxGroupDepth
  kTooManyOrders,       // more orders than DecodeLimits::max_orders
  kTooManyItems,        // an order with more items than DecodeLimits::max_items_per_order
  kTooManyPayments,     // an order with more payments than DecodeLimits::max_payments_per_order
  kBatchIdEmpty,        // OrderBatch.batch_id is empty
  kBatchIdTooLong,      // OrderBatch.batch_id is longer than the limit
  kSourceTooLong,       // OrderBatch.source is longer than the limit
  kBatchTooLarge,       // the input, or a column built from it, would reach 2 GiB (Arrow utf8 offsets are 32-bit)
  // Kafka record batches (the records stage); never a reason to refuse an OrderBatch:
  kCodec,               // the codec refused the data: corrupt, or larger than allowed once decompressed
  kCorruptRecordBatch,  // a Kafka record batch whose header, CRC or records do not add up
  kOffsetOutOfOrder,    // a record offset at or before the last one a LogDedup observed (a re-read needs reset())
  kCount_,
};
// The codes an OrderBatch can be refused with (InvalidBatch.code) end here.
constexpr Code kLastBatchCode = Code::kBatchTooLarge;

// Stable snake_case name of a code ("truncated", "batch_id_empty", ...).
const char* code_name(Code code);
// One-line description of a code, for documentation and --help output.
const char* code_description(Code code);

// Where and why: filled once, on the cold path, by whoever detects the error.
struct Error {
  Code code = Code::kOk;
  int64_t offset = -1;  // byte offset in the input; -1 for batch-level rules
  std::string message;
};

// A value or the Error that prevented it.
template <typename T>
class Result {
 public:
  // Implicit by design, so a function returns either a value or an Error.
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)
  bool ok() const { return v_.index() == 0; }
  T& value() { return std::get<0>(v_); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Keeps the happy path flat: return the code if the expression failed.
#define KS_TRY(expr)                                      \
  do {                                                    \
    ::keystone::Code ks_code_ = (expr);                   \
    if (KS_UNLIKELY(ks_code_ != ::keystone::Code::kOk)) { \
      return ks_code_;                                    \
    }                                                     \
  } while (0)

}  // namespace keystone
