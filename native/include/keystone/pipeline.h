// process_batch: the stages in order (decode, validate, dedup, encode) and
// nothing else. One call per batch, on whatever thread the caller chooses;
// the only shared state is the DedupWindow, which locks for itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "keystone/arrow.h"
#include "keystone/decode.h"
#include "keystone/dedup.h"
#include "keystone/status.h"
#include "keystone/validate.h"

namespace keystone {

struct ProcessOptions {
  DecodeLimits limits;
  ValidationOptions validation;
  // The four Bronze tables of the accepted orders. The server's ack path
  // needs only the spans and the rejects (Bronze is built from Kafka), so
  // it turns them off; tools and tests that look at the rows keep them.
  bool bronze_tables = true;
};

struct BatchOutput {
  std::string batch_id;
  std::string source;
  size_t input_bytes = 0;  // the size of the batch processed: its spans lie within it
  uint32_t orders = 0;
  uint32_t accepted = 0;
  uint32_t duplicates = 0;
  uint32_t rejected = 0;
  std::vector<Rejection> rejections;  // index order
  std::vector<Key128> inserted_keys;  // what this batch added to the dedup window
  EncodedBatch tables;                // the four Bronze tables are null unless ProcessOptions::bronze_tables
};

// Inputs of 2 GiB or more are refused before decoding (offsets are 32-bit).
constexpr size_t kMaxInputBytes = (size_t{1} << 31) - 1;

// `window` may be null: no dedup across or within batches.
Result<BatchOutput> process_batch(const uint8_t* data, size_t size, const ProcessOptions& options, DedupWindow* window,
                                  int64_t now_ms);

}  // namespace keystone
