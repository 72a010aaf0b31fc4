// Stage 4, encode: the accepted orders of a BatchView -> the four Bronze
// tables (and two side tables for the server) as Arrow columns, exported
// through the Arrow C Data Interface. The same encoder builds the tables of
// orders read back from Kafka (bronze_decode), where lineage is per order
// and every table ends with the producer column, and the quarantine table.
//
// Ownership, written down once: a Table is immutable once built and shared
// by std::shared_ptr. Every exported ArrowArray (the struct and each child)
// holds its own reference, so the consumer may release the parent and the
// children in any order, and the data lives until the last release. A
// released structure has release == nullptr, as the specification requires.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <vector>

#include "keystone/arrow_abi.h"
#include "keystone/decode.h"
#include "keystone/validate.h"

namespace keystone {

enum class TableId : uint8_t {
  kOrders,
  kOrderItems,
  kOrderPayments,
  kCustomers,
  kOrderSpans,  // per accepted order, row for row with orders: its offset/length in the input,
                //   Kafka key hash of order_id, and how many item/payment/customer rows it has
  kRejects,     // one row per rejected order, for the dead-letter path
  // Read back from Kafka (bronze_decode): the four tables in Bronze's own
  // schemas (the ones above plus producer), named as above, so by name one
  // finds the ones above; then the quarantine and the child row counts.
  kBronzeOrders,
  kBronzeOrderItems,
  kBronzeOrderPayments,
  kBronzeCustomers,
  kQuarantine,   // Bronze's _quarantine: rejected or unreadable orders with their bytes
  kChildCounts,  // per order of kBronzeOrders: item_count, payment_count, customer_count
  kCount_,
};
// The tables process_batch builds (EncodedBatch) are the first ones.
constexpr size_t kIngestTableCount = static_cast<size_t>(TableId::kRejects) + 1;

// kTimestampUs is timestamp[us, tz=UTC]; kBinary is laid out as kUtf8.
enum class ColumnType : uint8_t { kUtf8, kInt32, kInt64, kTimestampUs, kDecimal12_2, kBinary };

struct FieldDef {
  const char* name;
  ColumnType type;
};

struct TableDef {
  const char* name;
  const FieldDef* fields;
  int num_fields;
};

const TableDef& table_def(TableId table);
// The first table named `name`, or kCount_ when there is none.
TableId table_by_name(const char* name);

// A growable, 16-byte aligned (malloc) byte buffer; Arrow takes it as is.
class Buffer {
 public:
  Buffer() = default;
  ~Buffer() { std::free(data_); }
  Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_), cap_(o.cap_) {
    o.data_ = nullptr;
    o.size_ = o.cap_ = 0;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  // Frees the memory: the buffer is empty again.
  void reset() {
    std::free(data_);
    data_ = nullptr;
    size_ = cap_ = 0;
  }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  void reserve(size_t n) {
    if (n > cap_) grow(n);
  }
  // Drops everything past the first n bytes (n <= size()); the memory stays.
  void truncate(size_t n) { size_ = n; }
  // Extends the size by n bytes and returns where they start.
  uint8_t* extend(size_t n) {
    if (size_ + n > cap_) grow(size_ + n);
    uint8_t* p = data_ + size_;
    size_ += n;
    return p;
  }

 private:
  void grow(size_t need);
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t cap_ = 0;
};

// One column: validity bitmap (empty when nothing is null), then the
// values (fixed width) or offsets + data (utf8).
struct Column {
  Buffer validity;
  Buffer values;  // fixed-width values, or int32 offsets for utf8
  Buffer data;    // utf8 bytes
  int64_t null_count = 0;
};

struct Table {
  TableId id = TableId::kCount_;
  int64_t num_rows = 0;
  std::vector<Column> columns;
};

struct EncodedBatch {
  std::shared_ptr<const Table> tables[kIngestTableCount];
};

// The tables of orders read back from Kafka: kBronzeOrders .. kBronzeCustomers
// and kChildCounts.
struct BronzeTables {
  std::shared_ptr<const Table> orders, order_items, order_payments, customers, child_counts;
};

// One row of the quarantine table. The views must outlive encode_quarantine,
// which copies them.
struct QuarantineRow {
  std::string_view batch_id;
  std::string_view source;
  std::string_view producer;
  bool has_producer = false;
  int32_t index = -1;
  std::string_view event_id;
  std::string_view reason;
  std::string_view message;
  std::string_view raw;
  int64_t received_at_us = 0;
};

// Refuses (kBatchTooLarge) a batch whose columns would pass the 2 GiB that
// 32-bit utf8 offsets address: batch_id, source and an order's order_id are
// repeated on many rows, so a column can outgrow the input it came from.
// Runs before dedup, so a refused batch leaves no keys behind.
Code check_encodable(const BatchView& batch, const std::vector<Verdict>& verdicts, Error* error);

// Builds the tables from the orders whose verdict is kAccept (and, for
// kRejects, the rejections): the spans and the rejects always, the four
// Bronze tables when `bronze_tables` (null otherwise). check_encodable()
// must have passed.
void encode_tables(const BatchView& batch, const std::vector<Verdict>& verdicts,
                   const std::vector<Rejection>& rejections, bool bronze_tables, EncodedBatch* out);

// The Bronze tables of the orders `rows` of a view whose orders carry their
// own lineage (BatchView::lineage), in row order, and their child counts.
// The caller bounds the columns (2 GiB), as check_encodable does for a batch.
void encode_bronze_tables(const BatchView& batch, const std::vector<uint32_t>& rows, BronzeTables* out);

// The quarantine table of `rows`; the caller bounds the columns (2 GiB).
std::shared_ptr<const Table> encode_quarantine(const std::vector<QuarantineRow>& rows);

// Fills *out with the schema of `table` (a struct of its fields).
void export_schema(TableId table, ArrowSchema* out);
// Fills *out with the table as a struct array sharing ownership of it.
void export_table(const std::shared_ptr<const Table>& table, ArrowArray* out);

}  // namespace keystone
