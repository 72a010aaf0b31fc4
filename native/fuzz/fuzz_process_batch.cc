// libFuzzer target for the whole native pipeline: any bytes in, and either a
// clean Error or a result whose Arrow export is self-consistent. Built with
// AddressSanitizer and UndefinedBehaviorSanitizer (make fuzz).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "keystone/arrow.h"
#include "keystone/pipeline.h"

using namespace keystone;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

// Every exported utf8 column must have monotonic offsets inside its data.
void check_export(const std::shared_ptr<const Table>& table) {
  ArrowArray a;
  export_table(table, &a);
  const TableDef& def = table_def(table->id);
  for (int i = 0; i < def.num_fields; ++i) {
    const ArrowArray* c = a.children[i];
    require(c->length == a.length);
    if (def.fields[i].type == ColumnType::kUtf8) {
      const auto* offsets = static_cast<const int32_t*>(c->buffers[1]);
      require(offsets[0] == 0);
      for (int64_t r = 0; r < c->length; ++r) require(offsets[r] <= offsets[r + 1]);
      require(static_cast<size_t>(offsets[c->length]) == table->columns[i].data.size());
    }
  }
  a.release(&a);
  require(a.release == nullptr);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A small window shared across inputs, so eviction paths run too.
  static DedupWindow window(DedupOptions{256, 1000});
  static int64_t now_ms = 0;
  now_ms += 7;
  ProcessOptions options;
  options.limits.max_orders = 4096;
  auto result = process_batch(data, size, options, &window, now_ms);
  if (!result.ok()) {
    const Error& e = result.error();
    require(e.code != Code::kOk && !e.message.empty());
    require(e.offset >= -1 && e.offset <= static_cast<int64_t>(size));
    return 0;
  }
  const BatchOutput& out = result.value();
  require(out.accepted + out.duplicates + out.rejected == out.orders);
  const auto& spans = *out.tables.tables[static_cast<size_t>(TableId::kOrderSpans)];
  for (int64_t r = 0; r < spans.num_rows; ++r) {
    int64_t offset;
    int32_t length;
    std::memcpy(&offset, spans.columns[0].values.data() + 8 * r, 8);
    std::memcpy(&length, spans.columns[1].values.data() + 4 * r, 4);
    require(offset >= 0 && length >= 0 && static_cast<size_t>(offset) + length <= size);
  }
  for (const auto& table : out.tables.tables) check_export(table);
  return 0;
}
