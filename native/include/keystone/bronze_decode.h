// Kafka records -> Bronze: the record batches a Fetch returned for ONE
// topic-partition, decoded straight into Bronze's Arrow tables, with no
// object per record.
//
// The orders topic: read_record_batches, then, batch by batch, every data
// record at or after `first_offset` (a Fetch returns whole batches, so the
// first may start before it; control batches carry none):
//   1. dedup by its event_id header in a LogDedup (an empty event_id keys by
//      the value's bytes, as at ingest; no header, no dedup): a duplicate is
//      dropped, whatever its value;
//   2. its lineage headers (batch_id, source, producer) checked by the batch
//      rules of validate.cc, its value decoded as one Order (decode_order)
//      and checked by the order rules; a record that fails any of them goes
//      to the quarantine table, never failing the call;
//   3. the kept orders become the four Bronze tables (arrow.cc's encoder,
//      lineage per order, plus producer) and their child row counts.
// The dead-letter topic: the same reading and dedup (key: the batch_id and
// error.index headers), and each kept record becomes one quarantine row from
// its headers and value.
//
// Determinism: every decision depends on the records alone and the dedup
// window, which is defined over offsets; the call stops early only at a
// record batch boundary (next_offset says where to go on), so a fetch split
// differently decides every record the same way. A corrupt fetch is refused
// before the window is touched.
//
// Ownership: the tables own their buffers (strings are copied out of the
// input and the decompressed batches), so they outlive the call and the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "keystone/arrow.h"
#include "keystone/log_dedup.h"
#include "keystone/pipeline.h"
#include "keystone/status.h"

namespace keystone {

constexpr int64_t kNoEndOffset = INT64_MAX;

// Quarantine reason of a record whose value is not an Order.
constexpr const char* kUndecodable = "undecodable";

struct DecodedRecords {
  int64_t next_offset = 0;  // after the last whole batch read (control ones too); first_offset if none
  size_t consumed = 0;      // bytes of the input those batches take
  uint64_t records = 0;     // data records read at or after first_offset
  uint64_t duplicates = 0;
  uint64_t orders = 0;           // kept: rows of tables.orders (0 for the dead-letter topic)
  uint64_t quarantined = 0;      // rows of quarantine
  int64_t max_timestamp_ms = 0;  // of the records counted; meaningful when records > 0
  int64_t last_offset = -1;      // likewise
  BronzeTables tables;           // the orders topic; only child_counts (no rows) for the dead-letter topic
  std::shared_ptr<const Table> quarantine;
};

// The orders topic. Returns kCorruptRecordBatch or kCodec (the fetch is
// broken: a batch's header, CRC, codec or offsets), kOffsetOutOfOrder (the
// records are not after dedup->last_offset(): a re-read needs reset()) or
// kBatchTooLarge (one record batch would build a column of 2 GiB), with
// *error naming the byte offset; the window is then unchanged. `dedup` may be
// null (no dedup); `options` are the ingest side's limits and rules. Records
// at or past `end_offset` are not read (kNoEndOffset: no bound), and
// next_offset stops there.
Code decode_order_records(const uint8_t* data, size_t n, int64_t first_offset, int64_t end_offset,
                          size_t max_batch_bytes, LogDedup* dedup, const ProcessOptions& options, DecodedRecords* out,
                          Error* error);

// The dead-letter topic: only the quarantine table (index -1 where
// error.index is missing or not a decimal int32). Errors as above.
Code decode_reject_records(const uint8_t* data, size_t n, int64_t first_offset, int64_t end_offset,
                           size_t max_batch_bytes, LogDedup* dedup, DecodedRecords* out, Error* error);

}  // namespace keystone
