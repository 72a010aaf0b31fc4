// Kafka v2 record batches (magic 2), built straight from the request bytes:
// one record per accepted order (key order_id, value the order's bytes as the
// client sent them, headers event_id and the batch's own), or per rejected
// order for the dead-letter topic. A builder collects the records of one
// topic-partition from any number of OrderBatches, in the order they are
// appended, then compresses them once (finish) and is stamped with the
// producer's id, epoch and first sequence number when the producer sends it.
//
// Layout (big-endian, as Kafka's DefaultRecordBatch):
//   0 baseOffset int64 | 8 batchLength int32 | 12 partitionLeaderEpoch int32
//   16 magic int8 = 2 | 17 crc uint32 (CRC32C of bytes 21..end)
//   21 attributes int16 (bits 0-2: codec) | 23 lastOffsetDelta int32
//   27 baseTimestamp int64 | 35 maxTimestamp int64 | 43 producerId int64
//   51 producerEpoch int16 | 53 baseSequence int32 | 57 recordCount int32
//   61 records, compressed together
// Each record: length varint | attributes int8 | timestampDelta varlong |
//   offsetDelta varint | key length varint (-1: null) | key | value length
//   varint | value | header count varint | (key length varint | key |
//   value length varint | value) per header. Varints are zigzag.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "keystone/arrow.h"
#include "keystone/codec.h"
#include "keystone/pipeline.h"
#include "keystone/status.h"

namespace keystone {

constexpr size_t kRecordBatchHeaderBytes = 61;

// Read back, a null value (length -1) is a default string_view (data() is
// null); an empty one points into the batch.
struct RecordHeader {
  std::string_view key;
  std::string_view value;
};

class RecordBatchBuilder {
 public:
  // `max_bytes` bounds the records before compression, the size Kafka's
  // clients bound too; `level` 0 is the codec's default.
  RecordBatchBuilder(Codec codec, int level, size_t max_bytes);

  // Appends one record and returns true; returns false, appending nothing,
  // when the builder holds records already and this one would take it past
  // max_bytes (an empty builder takes any record, so one larger than
  // max_bytes travels alone). Never after finish().
  bool append(int64_t timestamp_ms, const std::string_view* key, std::string_view value, const RecordHeader* headers,
              size_t header_count);

  uint32_t record_count() const { return count_; }
  // Before finish(): the header plus the records so far, uncompressed.
  // After: the batch as it goes on the wire.
  size_t size() const { return finished_ ? batch_.size() : kRecordBatchHeaderBytes + records_.size(); }
  bool finished() const { return finished_; }
  Codec codec() const { return codec_; }

  // Compresses the records and lays out the batch, with producer id -1,
  // epoch -1 and base sequence -1 until set_producer_state(). Frees the
  // uncompressed records. A second call does nothing.
  Code finish(Error* error);

  // Stamps the producer's id, epoch and first sequence number into the
  // finished batch; the CRC, which covers them, is computed by batch().
  void set_producer_state(int64_t producer_id, int16_t producer_epoch, int32_t base_sequence);

  // The finished batch, its CRC computed once after the last stamp (so a
  // batch that is stamped at its first send is checksummed once, not twice).
  const Buffer& batch();

 private:
  Codec codec_;
  int level_;
  size_t max_bytes_;
  uint32_t count_ = 0;
  int64_t base_timestamp_ = 0;
  int64_t max_timestamp_ = 0;
  bool finished_ = false;
  bool crc_current_ = false;
  Buffer records_;  // the records, uncompressed, until finish()
  Buffer batch_;    // the finished batch
};

// Appends the accepted orders of `out` that Kafka's default partitioner puts
// on `partition` of `partitions` (key_hash % partitions), from row `from` of
// the orders table on, in row order: key order_id, value the order's bytes
// in `raw`, headers event_id then `common`. `raw` is the request `out` was
// made from (out.input_bytes long). Returns the row to go on from: out's
// accepted count when every row was looked at, less when the builder filled
// up (append the rest to the next builder from there).
size_t append_orders(RecordBatchBuilder* builder, const BatchOutput& out, const uint8_t* raw, int32_t partition,
                     int32_t partitions, size_t from, int64_t timestamp_ms, const std::vector<RecordHeader>& common);

// The same for the rejected orders (every one, whatever its key): no key,
// value the rejected order's bytes, headers event_id, `common`, then
// error.reason, error.index (its position in the batch, decimal) and
// error.message (the rejection's message, as in the rejects table).
size_t append_rejects(RecordBatchBuilder* builder, const BatchOutput& out, const uint8_t* raw, size_t from,
                      int64_t timestamp_ms, const std::vector<RecordHeader>& common);

// How many accepted orders of `out` go to each of `partitions` partitions.
std::vector<uint32_t> partition_counts(const BatchOutput& out, int32_t partitions);

// -- reading: record batches as a Fetch response carries them

struct Record {
  int64_t offset = 0;
  int64_t timestamp_ms = 0;
  bool has_key = false;
  std::string_view key;
  std::string_view value;
  uint32_t first_header = 0;  // its headers: RecordSet::headers[first_header, first_header + header_count)
  uint32_t header_count = 0;
};

struct RecordBatchInfo {
  int64_t base_offset = 0;
  int64_t producer_id = -1;
  int16_t producer_epoch = -1;
  int32_t base_sequence = -1;
  Codec codec = Codec::kNone;
  bool transactional = false;
  bool control = false;           // a transaction marker: no data records
  int32_t last_offset_delta = 0;  // the batch covers offsets base_offset .. base_offset + last_offset_delta
  size_t size = 0;                // bytes of the batch in the input, header included
  uint32_t record_count = 0;
  uint32_t first_record = 0;  // its records: RecordSet::records[first_record, first_record + record_count)
};

// What read_record_batches found. The views point into the input or into
// `storage` (decompressed records): both must outlive them.
struct RecordSet {
  std::vector<RecordBatchInfo> batches;
  std::vector<Record> records;
  std::vector<RecordHeader> headers;
  std::vector<Buffer> storage;
  size_t consumed = 0;  // bytes of whole batches read; a batch cut short at the end is left
};

// Reads the v2 record batches in data[0, n) back to back: checks each
// header, its CRC32C, decompresses (refusing more than max_batch_bytes per
// batch) and parses every record, refusing any length that points outside
// its batch. A last batch cut short (Fetch responses may end inside one) is
// not an error: `consumed` stops before it. Control batches are listed with
// no records.
Code read_record_batches(const uint8_t* data, size_t n, size_t max_batch_bytes, RecordSet* out, Error* error);

}  // namespace keystone
