// libFuzzer target for the Kafka record batch reader: hostile fetch bytes in,
// and either a clean Error or records whose views all lie inside the input or
// the decompressed storage. The first input byte picks whether the CRC of
// each batch-shaped frame is fixed up first: without that, almost every
// mutation would stop at the CRC check and the decompression and record
// parsing behind it would never be reached.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fix_crcs.h"
#include "keystone/codec.h"
#include "keystone/records.h"

using namespace keystone;
using keystone::fuzz::fix_crcs;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

bool inside(std::string_view v, const uint8_t* begin, size_t n) {
  const auto* p = reinterpret_cast<const uint8_t*>(v.data());
  return v.empty() || (p >= begin && p + v.size() <= begin + n);
}

bool inside_any(std::string_view v, const std::vector<uint8_t>& input, const RecordSet& set) {
  if (inside(v, input.data(), input.size())) return true;
  for (const Buffer& b : set.storage) {
    if (inside(v, b.data(), b.size())) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<uint8_t> input(data + 1, data + size);
  if (data[0] & 1) fix_crcs(&input);
  RecordSet set;
  Error error;
  constexpr size_t kMaxBatchBytes = 1 << 20;
  const Code code = read_record_batches(input.data(), input.size(), kMaxBatchBytes, &set, &error);
  if (code != Code::kOk) {
    require(!error.message.empty());
    require(error.offset >= -1 && error.offset <= static_cast<int64_t>(input.size()));
    return 0;
  }
  require(set.consumed <= input.size());
  size_t records = 0;
  for (const RecordBatchInfo& b : set.batches) {
    require(b.first_record == records);
    records += b.record_count;
  }
  require(records == set.records.size());
  for (const Buffer& b : set.storage) require(b.size() <= kMaxBatchBytes);
  for (const Record& r : set.records) {
    require(inside_any(r.key, input, set) && inside_any(r.value, input, set));
    require(static_cast<size_t>(r.first_header) + r.header_count <= set.headers.size());
  }
  for (const RecordHeader& h : set.headers) require(inside_any(h.key, input, set) && inside_any(h.value, input, set));
  return 0;
}
