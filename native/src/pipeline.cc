#include "keystone/pipeline.h"

namespace keystone {

// Turns a stage's Code into the Error it filled, keeping process_batch flat.
#define KS_TRY_STAGE(expr, error)           \
  do {                                      \
    if (KS_UNLIKELY((expr) != Code::kOk)) { \
      return (error);                       \
    }                                       \
  } while (0)

namespace {
constexpr size_t kKeepOrdersCapacity = 1 << 16;
}  // namespace

Result<BatchOutput> process_batch(const uint8_t* data, size_t size, const ProcessOptions& options, DedupWindow* window,
                                  int64_t now_ms) {
  Error error;
  if (KS_UNLIKELY(size > kMaxInputBytes)) {
    error.code = Code::kBatchTooLarge;
    error.offset = 0;
    error.message = "batch of " + std::to_string(size) + " bytes is larger than the 2 GiB the core accepts";
    return error;
  }
  // The view is per thread and reused: its vectors keep their capacity, so
  // steady-state decoding allocates nothing.
  thread_local BatchView view;
  KS_TRY_STAGE(decode_batch(data, size, options.limits, &view, &error), error);
  KS_TRY_STAGE(validate_batch(view, options.validation, &error), error);

  BatchOutput out;
  std::vector<Verdict> verdicts;
  validate_orders(view, options.validation, &verdicts, &out.rejections);
  KS_TRY_STAGE(check_encodable(view, verdicts, &error), error);

  if (window != nullptr) dedup_orders(view, window, now_ms, &verdicts, &out.inserted_keys);

  encode_tables(view, verdicts, out.rejections, options.bronze_tables, &out.tables);

  out.batch_id.assign(view.str(view.batch_id), view.batch_id.length);
  out.source.assign(view.str(view.source), view.source.length);
  out.input_bytes = size;
  out.orders = static_cast<uint32_t>(view.orders.size());
  out.rejected = static_cast<uint32_t>(out.rejections.size());
  out.accepted = static_cast<uint32_t>(out.tables.tables[static_cast<size_t>(TableId::kOrderSpans)]->num_rows);
  out.duplicates = out.orders - out.accepted - out.rejected;
  // A rare huge batch should not pin its memory to this thread for good.
  if (view.orders.capacity() > kKeepOrdersCapacity) view = BatchView();
  return out;
}

}  // namespace keystone
