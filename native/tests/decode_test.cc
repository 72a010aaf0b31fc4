#include "keystone/decode.h"

#include <string>

#include "check.h"
#include "wire_builder.h"

using namespace keystone;
using namespace wirebuild;

static Code decode(const std::string& s, BatchView* view, Error* error, DecodeLimits limits = {}) {
  return decode_batch(bytes(s), s.size(), limits, view, error);
}

static std::string str(const BatchView& v, Span s) { return std::string(v.str(s), s.length); }

TEST(decodes_orders_items_payments_and_customer_as_spans) {
  std::string o1 = order("e1", "o1"), o2 = order("e2", "o2");
  std::string s = batch("b1", lfield(3, o1) + lfield(3, o2));
  BatchView v;
  Error e;
  CHECK_EQ(decode(s, &v, &e), Code::kOk);
  CHECK_EQ(str(v, v.batch_id), "b1");
  CHECK_EQ(str(v, v.source), "test");
  CHECK_EQ(v.orders.size(), 2u);
  CHECK_EQ(str(v, v.orders[1].order_id), "o2");
  CHECK_EQ(str(v, v.orders[0].bytes), o1);
  CHECK_EQ(str(v, v.orders[1].bytes), o2);
  CHECK_EQ(v.orders[0].order_status, 6);
  CHECK(v.orders[0].timestamps[kPurchase].present);
  CHECK_EQ(v.orders[0].timestamps[kPurchase].seconds, 1500000000);
  CHECK_EQ(v.orders[0].timestamps[kPurchase].nanos, 250000000);
  CHECK(!v.orders[0].timestamps[kApproved].present);
  CHECK_EQ(v.items.size(), 2u);
  CHECK_EQ(v.orders[1].items_begin, 1u);
  CHECK_EQ(v.items[1].price_cents, 1999);
  CHECK_EQ(v.payments[0].payment_value_cents, 2499);
  CHECK(v.orders[0].customer.present);
  CHECK_EQ(str(v, v.orders[0].customer.customer_city), "sao paulo");
}

TEST(last_value_wins_and_split_messages_merge) {
  std::string o = lfield(2, "first") + lfield(2, "second") + vfield(4, 3) + vfield(4, 5) +
                  lfield(12, lfield(3, "city")) + lfield(12, lfield(4, "RJ")) + lfield(5, vfield(1, 100)) +
                  lfield(5, vfield(2, 7));
  std::string s = batch("b", lfield(3, o));
  BatchView v;
  Error e;
  CHECK_EQ(decode(s, &v, &e), Code::kOk);
  const OrderView& ov = v.orders[0];
  CHECK_EQ(str(v, ov.order_id), "second");
  CHECK_EQ(ov.order_status, 5);
  CHECK_EQ(str(v, ov.customer.customer_city), "city");
  CHECK_EQ(str(v, ov.customer.customer_state), "RJ");
  CHECK_EQ(ov.timestamps[kPurchase].seconds, 100);
  CHECK_EQ(ov.timestamps[kPurchase].nanos, 7);
}

TEST(negative_enum_and_nanos_keep_their_signed_32_bit_value) {
  std::string o = vfield(4, static_cast<uint64_t>(int64_t{-3})) +
                  lfield(5, vfield(1, 946684800) + vfield(2, static_cast<uint64_t>(int64_t{-1})));
  std::string s = batch("b", lfield(3, o));
  BatchView v;
  Error e;
  CHECK_EQ(decode(s, &v, &e), Code::kOk);
  CHECK_EQ(v.orders[0].order_status, -3);
  CHECK_EQ(v.orders[0].timestamps[kPurchase].nanos, -1);
}

TEST(wrong_wire_type_names_the_field_path_and_offset) {
  std::string item = vfield(1, 1) + vfield(2, 5);  // product_id as a varint
  std::string o = lfield(2, "o") + lfield(10, item);
  std::string s = batch("b", lfield(3, order("e", "x")) + lfield(3, o));
  BatchView v;
  Error e;
  CHECK_EQ(decode(s, &v, &e), Code::kBadWireType);
  const size_t item_tag = s.size() - 2;
  CHECK_EQ(e.offset, static_cast<int64_t>(item_tag));
  CHECK_EQ(e.message, "wrong wire type at byte " + std::to_string(item_tag) + " in orders[1].items[0].product_id");
}

TEST(invalid_utf8_points_at_the_string) {
  std::string s = batch("b", lfield(3, lfield(12, lfield(3, "S\xc3"))));
  BatchView v;
  Error e;
  CHECK_EQ(decode(s, &v, &e), Code::kInvalidUtf8);
  CHECK_EQ(e.offset, static_cast<int64_t>(s.size() - 2));
  CHECK(e.message.find("orders[0].customer.customer_city") != std::string::npos);
}

TEST(limits_stop_decoding_before_memory_grows) {
  std::string orders;
  for (int i = 0; i < 4; ++i) orders += lfield(3, order("e", "o"));
  std::string s = batch("b", orders);
  BatchView v;
  Error e;
  DecodeLimits limits;
  limits.max_orders = 3;
  CHECK_EQ(decode(s, &v, &e, limits), Code::kTooManyOrders);
  CHECK_EQ(v.orders.size(), 3u);
  std::string items;
  for (int i = 0; i < 3; ++i) items += lfield(10, vfield(1, i + 1));
  std::string s2 = batch("b", lfield(3, items));
  limits = DecodeLimits{};
  limits.max_items_per_order = 2;
  CHECK_EQ(decode(s2, &v, &e, limits), Code::kTooManyItems);
  CHECK(e.message.find("orders[0].items[2]") != std::string::npos);
}

TEST(a_reused_view_decodes_a_second_batch_cleanly) {
  BatchView v;
  Error e;
  std::string a = batch("a", lfield(3, order("1", "1")) + lfield(3, order("2", "2")));
  std::string b = batch("b", lfield(3, order("3", "3")));
  CHECK_EQ(decode(a, &v, &e), Code::kOk);
  CHECK_EQ(decode(b, &v, &e), Code::kOk);
  CHECK_EQ(v.orders.size(), 1u);
  CHECK_EQ(v.items.size(), 1u);
  CHECK_EQ(v.orders[0].items_begin, 0u);
  CHECK_EQ(str(v, v.batch_id), "b");
}

static std::string peek(const std::string& s) {
  Span id;
  if (!peek_batch_id(bytes(s), s.size(), &id)) return "<none>";
  return s.substr(id.offset, id.length);
}

TEST(peek_batch_id_reads_the_id_without_decoding_orders) {
  CHECK_EQ(peek(batch("b-1", lfield(3, order("e", "o")))), "b-1");
  // Last one wins, as in decode_batch, even after the orders.
  CHECK_EQ(peek(batch("first", lfield(3, order("e", "o"))) + lfield(1, "second")), "second");
  // Orders are stepped over, not decoded: a broken order does not hide the id.
  CHECK_EQ(peek(batch("b-2", lfield(3, std::string("\xff\xff", 2)))), "b-2");
  CHECK_EQ(peek(lfield(2, "only a source")), "<none>");
  CHECK_EQ(peek(batch("b-3", "") + "\x1a\x05" + "ab"), "<none>");   // truncated tail (length 5, 2 bytes)
  CHECK_EQ(peek(lfield(1, std::string("\xc3\x28", 2))), "<none>");  // not UTF-8
  CHECK_EQ(peek(""), "<none>");
}
