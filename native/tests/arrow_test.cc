#include "keystone/arrow.h"

#include <cstring>
#include <string>

#include "check.h"
#include "keystone/pipeline.h"
#include "wire_builder.h"

using namespace keystone;
using namespace wirebuild;

static EncodedBatch encode(const std::string& s) {
  auto r = process_batch(bytes(s), s.size(), ProcessOptions{}, nullptr, 0);
  CHECK(r.ok());
  return r.value().tables;
}

TEST(schemas_use_the_arrow_format_strings) {
  ArrowSchema s;
  export_schema(TableId::kOrderItems, &s);
  CHECK_EQ(std::string(s.format), "+s");
  CHECK_EQ(s.n_children, 9);
  CHECK_EQ(std::string(s.children[0]->name), "order_id");
  CHECK_EQ(std::string(s.children[1]->format), "i");
  CHECK_EQ(std::string(s.children[4]->format), "tsu:UTC");
  CHECK_EQ(std::string(s.children[5]->format), "d:12,2");
  CHECK_EQ(s.children[5]->flags, ARROW_FLAG_NULLABLE);
  s.release(&s);
  CHECK(s.release == nullptr);
}

TEST(exported_data_outlives_the_batch_and_children_release_alone) {
  std::string s = batch("b1", lfield(3, order("e1", "o1")) + lfield(3, order("e2", "o22")));
  ArrowArray a;
  {
    EncodedBatch t = encode(s);
    export_table(t.tables[static_cast<size_t>(TableId::kOrders)], &a);
  }
  CHECK_EQ(a.length, 2);
  CHECK_EQ(a.n_children, 11);
  // A consumer may move a child out and release it on its own schedule.
  ArrowArray moved = *a.children[1];
  a.children[1]->release = nullptr;
  a.release(&a);
  CHECK(a.release == nullptr);
  const auto* offsets = static_cast<const int32_t*>(moved.buffers[1]);
  const auto* chars = static_cast<const char*>(moved.buffers[2]);
  CHECK_EQ(std::string(chars + offsets[1], offsets[2] - offsets[1]), "o22");
  moved.release(&moved);
}

TEST(timestamps_are_microseconds_with_a_bitmap_only_when_null) {
  std::string s = batch("b", lfield(3, order("e1", "o1")));
  EncodedBatch t = encode(s);
  const Table& orders = *t.tables[static_cast<size_t>(TableId::kOrders)];
  const Column& purchase = orders.columns[4];
  const Column& approved = orders.columns[5];
  int64_t us;
  std::memcpy(&us, purchase.values.data(), 8);
  CHECK_EQ(us, int64_t{1500000000} * 1000000 + 250000);
  CHECK_EQ(purchase.null_count, 0);
  CHECK_EQ(purchase.validity.size(), 0u);
  CHECK_EQ(approved.null_count, 1);
  CHECK_EQ(approved.validity.data()[0] & 1, 0);
}

TEST(money_is_a_128_bit_count_of_cents) {
  std::string s = batch("b", lfield(3, order("e1", "o1")));
  EncodedBatch t = encode(s);
  const Column& price = t.tables[static_cast<size_t>(TableId::kOrderItems)]->columns[5];
  int64_t parts[2];
  std::memcpy(parts, price.values.data(), 16);
  CHECK_EQ(parts[0], 1999);
  CHECK_EQ(parts[1], 0);
}

TEST(empty_tables_export_valid_offsets) {
  std::string s = batch("b", "");
  EncodedBatch t = encode(s);
  ArrowArray a;
  export_table(t.tables[static_cast<size_t>(TableId::kCustomers)], &a);
  CHECK_EQ(a.length, 0);
  CHECK(a.children[0]->buffers[1] != nullptr);
  CHECK_EQ(static_cast<const int32_t*>(a.children[0]->buffers[1])[0], 0);
  a.release(&a);
}
