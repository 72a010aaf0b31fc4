// libFuzzer target for the Bronze decoder: hostile fetch bytes through
// decode_order_records and decode_reject_records, each with a LogDedup that
// lives across inputs (as a consumer's window does across fetches), and
// either a clean Error that left the window where it was, or tables whose
// exports are consistent and whose counts add up. The first input byte
// picks whether CRCs are fixed up first (as in fuzz_read_records) and where
// first_offset falls.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "fix_crcs.h"
#include "keystone/arrow.h"
#include "keystone/arrow_abi.h"
#include "keystone/bronze_decode.h"
#include "keystone/codec.h"
#include "keystone/records.h"

using namespace keystone;
using keystone::fuzz::fix_crcs;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

// Exports the table and walks what an importer reads: offsets that rise
// inside the data buffer, a validity bitmap that agrees with null_count.
void check_export(const std::shared_ptr<const Table>& table) {
  if (!table) return;
  ArrowArray array;
  export_table(table, &array);
  require(array.length == table->num_rows);
  const TableDef& def = table_def(table->id);
  for (int c = 0; c < def.num_fields; ++c) {
    const ArrowArray* child = array.children[c];
    require(child->length == table->num_rows);
    const Column& col = table->columns[static_cast<size_t>(c)];
    if (def.fields[c].type == ColumnType::kUtf8 || def.fields[c].type == ColumnType::kBinary) {
      const auto* offsets = static_cast<const int32_t*>(child->buffers[1]);
      require(offsets[0] == 0);
      for (int64_t r = 0; r < child->length; ++r) require(offsets[r + 1] >= offsets[r]);
      require(static_cast<size_t>(offsets[child->length]) == col.data.size());
    }
    int64_t nulls = 0;
    if (child->buffers[0] != nullptr) {
      const auto* bits = static_cast<const uint8_t*>(child->buffers[0]);
      for (int64_t r = 0; r < child->length; ++r) nulls += (bits[r >> 3] >> (r & 7) & 1) == 0;
    }
    require(nulls == child->null_count);
  }
  array.release(&array);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static LogDedup order_window(64, 60000);
  static LogDedup reject_window(64, 60000);
  if (size == 0) return 0;
  std::vector<uint8_t> input(data + 1, data + size);
  if (data[0] & 1) fix_crcs(&input);
  const int64_t first_offset = data[0] >> 1;
  constexpr size_t kMaxBatchBytes = 1 << 20;
  for (bool orders : {true, false}) {
    LogDedup& window = orders ? order_window : reject_window;
    window.reset();  // each input is a fresh read of its partition
    // Half the time, a window that has already seen offset 3: the fetch may
    // then have to be refused as a re-read.
    if (data[0] & 2) {
      bool duplicate;
      Error ignored;
      require(window.observe(3, 0, Key128{1, 2}, &duplicate, &ignored) == Code::kOk);
    }
    const int64_t last_before = window.last_offset();
    const size_t held_before = window.size();
    DecodedRecords out;
    Error error;
    // A bound inside the input's offsets for a third of the inputs: the clip
    // at a record inside a batch is fuzzed too.
    const int64_t end_offset =
        input.size() % 3 == 0 ? first_offset + static_cast<int64_t>(input.size() % 97) : kNoEndOffset;
    const Code code = orders ? decode_order_records(input.data(), input.size(), first_offset, end_offset,
                                                    kMaxBatchBytes, &window, ProcessOptions{}, &out, &error)
                             : decode_reject_records(input.data(), input.size(), first_offset, end_offset,
                                                     kMaxBatchBytes, &window, &out, &error);
    if (code != Code::kOk) {
      require(!error.message.empty());
      require(error.offset >= -1 && error.offset <= static_cast<int64_t>(input.size()));
      require(window.last_offset() == last_before && window.size() == held_before);
      continue;
    }
    require(out.consumed <= input.size());
    require(out.next_offset >= first_offset);
    require(out.records == out.duplicates + out.orders + out.quarantined);
    require(window.size() <= 64);
    require(out.quarantine && static_cast<uint64_t>(out.quarantine->num_rows) == out.quarantined);
    check_export(out.quarantine);
    check_export(out.tables.child_counts);
    if (orders) {
      require(static_cast<uint64_t>(out.tables.orders->num_rows) == out.orders);
      require(out.tables.child_counts->num_rows == out.tables.orders->num_rows);
      check_export(out.tables.orders);
      check_export(out.tables.order_items);
      check_export(out.tables.order_payments);
      check_export(out.tables.customers);
    }
  }
  return 0;
}
