#include "keystone/pipeline.h"

#include <string>

#include "check.h"
#include "wire_builder.h"

using namespace keystone;
using namespace wirebuild;

TEST(counts_add_up_across_accept_reject_and_duplicate) {
  DedupWindow window(DedupOptions{});
  std::string bad = lfield(1, "e3") + lfield(2, "o3");  // no customer_id
  std::string s = batch("b1", lfield(3, order("e1", "o1")) + lfield(3, order("e1", "o1")) + lfield(3, bad) +
                                  lfield(3, order("e2", "o2")));
  auto r = process_batch(bytes(s), s.size(), ProcessOptions{}, &window, 1000);
  CHECK(r.ok());
  const BatchOutput& out = r.value();
  CHECK_EQ(out.batch_id, "b1");
  CHECK_EQ(out.orders, 4u);
  CHECK_EQ(out.accepted, 2u);
  CHECK_EQ(out.duplicates, 1u);
  CHECK_EQ(out.rejected, 1u);
  CHECK_EQ(out.rejections[0].index, 2u);
  CHECK_EQ(out.inserted_keys.size(), 2u);
  CHECK_EQ(out.tables.tables[static_cast<size_t>(TableId::kOrderItems)]->num_rows, 2);

  auto again = process_batch(bytes(s), s.size(), ProcessOptions{}, &window, 2000);
  CHECK(again.ok());
  CHECK_EQ(again.value().accepted, 0u);
  CHECK_EQ(again.value().duplicates, 3u);
}

TEST(decode_errors_carry_code_offset_and_path) {
  std::string s = batch("b1", lfield(3, order("e1", "o1")));
  std::string cut = s.substr(0, s.size() - 3);
  auto r = process_batch(bytes(cut), cut.size(), ProcessOptions{}, nullptr, 0);
  CHECK(!r.ok());
  CHECK_EQ(std::string(code_name(r.error().code)), "length_past_end");
  CHECK(r.error().message.find("at byte ") != std::string::npos);
}

TEST(without_bronze_tables_only_spans_and_rejects_are_built_and_the_counts_hold) {
  std::string bad = lfield(1, "e3") + lfield(2, "o3");  // no customer_id
  std::string s = batch("b1", lfield(3, order("e1", "o1")) + lfield(3, bad) + lfield(3, order("e2", "o2")));
  ProcessOptions lean;
  lean.bronze_tables = false;
  auto r = process_batch(bytes(s), s.size(), lean, nullptr, 0);
  CHECK(r.ok());
  const BatchOutput& out = r.value();
  CHECK_EQ(out.accepted, 2u);
  CHECK_EQ(out.rejected, 1u);
  for (TableId id : {TableId::kOrders, TableId::kOrderItems, TableId::kOrderPayments, TableId::kCustomers}) {
    CHECK(out.tables.tables[static_cast<size_t>(id)] == nullptr);
  }
  CHECK_EQ(out.tables.tables[static_cast<size_t>(TableId::kOrderSpans)]->num_rows, 2);
  CHECK_EQ(out.tables.tables[static_cast<size_t>(TableId::kRejects)]->num_rows, 1);
}
