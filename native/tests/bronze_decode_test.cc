#include "keystone/bronze_decode.h"

#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "keystone/codec.h"
#include "keystone/records.h"
#include "wire_builder.h"

using namespace keystone;
using namespace wirebuild;

namespace {

std::string utf8_at(const Table& t, int column, int64_t row) {
  const Column& c = t.columns[static_cast<size_t>(column)];
  const auto* offsets = reinterpret_cast<const int32_t*>(c.values.data());
  return std::string(reinterpret_cast<const char*>(c.data.data()) + offsets[row],
                     static_cast<size_t>(offsets[row + 1] - offsets[row]));
}

template <typename T>
T value_at(const Table& t, int column, int64_t row) {
  T v;
  std::memcpy(&v, t.columns[static_cast<size_t>(column)].values.data() + row * sizeof(T), sizeof(T));
  return v;
}

bool valid(const Table& t, int column, int64_t row) {
  const Column& c = t.columns[static_cast<size_t>(column)];
  return c.validity.size() == 0 || (c.validity.data()[row >> 3] >> (row & 7) & 1) != 0;
}

// Column positions of the Bronze tables (arrow.cc).
constexpr int kEventId = 0, kOrderId = 1, kBatchId = 9, kSource = 10, kProducer = 11;
constexpr int kQBatchId = 0, kQProducer = 2, kQIndex = 3, kQEventId = 4, kQReason = 5, kQMessage = 6, kQRaw = 7,
              kQReceivedAt = 8;

// Orders e1..eN (order ids o1..oN) and one the core rejects (no customer_id).
std::string request(const std::string& batch_id, int first, int count, bool with_reject) {
  std::string orders;
  for (int i = first; i < first + count; ++i) {
    orders += lfield(3, order("e" + std::to_string(i), "o" + std::to_string(i)));
  }
  if (with_reject) orders += lfield(3, lfield(1, "bad") + lfield(2, "o-bad"));
  return batch(batch_id, orders);
}

BatchOutput process(const std::string& raw) {
  auto r = process_batch(bytes(raw), raw.size(), ProcessOptions{}, nullptr, 0);
  CHECK(r.ok());
  return std::move(r.value());
}

// A finished record batch as the log holds it: at `base_offset`.
std::string finished(RecordBatchBuilder& b, int64_t base_offset) {
  Error error;
  CHECK_EQ(b.finish(&error), Code::kOk);
  std::string out(reinterpret_cast<const char*>(b.batch().data()), b.batch().size());
  for (int i = 0; i < 8; ++i) {
    out[static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(base_offset) >> (56 - 8 * i));
  }
  return out;  // the base offset is outside the CRC
}

std::string orders_batch(const std::string& raw, int64_t base_offset, const std::vector<RecordHeader>& common,
                         Codec codec = Codec::kZstd, int64_t timestamp_ms = 1700000000000) {
  BatchOutput out = process(raw);
  RecordBatchBuilder b(codec, 0, 1 << 20);
  append_orders(&b, out, bytes(raw), 0, 1, 0, timestamp_ms, common);
  return finished(b, base_offset);
}

const std::vector<RecordHeader> kCommon = {
    {"batch_id", "b-1"}, {"source", "test"}, {"content-type", "x"}, {"producer", "svc-a"}};

DecodedRecords decode(const std::string& fetch, int64_t first_offset, LogDedup* dedup) {
  DecodedRecords out;
  Error error;
  CHECK_EQ(decode_order_records(bytes(fetch), fetch.size(), first_offset, kNoEndOffset, 1 << 24, dedup,
                                ProcessOptions{}, &out, &error),
           Code::kOk);
  return out;
}

}  // namespace

TEST(orders_read_back_with_their_lineage_producer_and_child_counts) {
  const std::string fetch = orders_batch(request("b-1", 1, 3, false), 40, kCommon);
  LogDedup dedup(1000, 60000);
  DecodedRecords d = decode(fetch, 40, &dedup);
  CHECK_EQ(d.records, 3u);
  CHECK_EQ(d.orders, 3u);
  CHECK_EQ(d.duplicates + d.quarantined, 0u);
  CHECK_EQ(d.next_offset, 43);
  CHECK_EQ(d.consumed, fetch.size());
  CHECK_EQ(d.last_offset, 42);
  CHECK_EQ(d.max_timestamp_ms, 1700000000000);
  const Table& orders = *d.tables.orders;
  CHECK_EQ(orders.columns.size(), 12u);
  CHECK_EQ(orders.num_rows, 3);
  CHECK(utf8_at(orders, kEventId, 2) == "e3" && utf8_at(orders, kOrderId, 2) == "o3");
  CHECK(utf8_at(orders, kBatchId, 0) == "b-1" && utf8_at(orders, kSource, 1) == "test");
  CHECK(utf8_at(orders, kProducer, 2) == "svc-a" && valid(orders, kProducer, 2));
  const Table& items = *d.tables.order_items;
  CHECK_EQ(items.num_rows, 3);
  CHECK(utf8_at(items, 7, 1) == "b-1" && utf8_at(items, 9, 1) == "svc-a");
  const Table& counts = *d.tables.child_counts;
  CHECK_EQ(counts.num_rows, 3);
  CHECK_EQ(value_at<int32_t>(counts, 0, 0), 1);
  CHECK_EQ(value_at<int32_t>(counts, 1, 0), 1);
  CHECK_EQ(value_at<int32_t>(counts, 2, 0), 1);
  CHECK_EQ(d.quarantine->num_rows, 0);
  CHECK_EQ(dedup.last_offset(), 42);
}

TEST(lineage_is_per_order_and_a_missing_producer_is_null) {
  std::string fetch = orders_batch(request("b-1", 1, 2, false), 0, kCommon);
  fetch += orders_batch(request("b-2", 3, 2, false), 2, {{"batch_id", "b-2"}, {"source", "other"}});
  DecodedRecords d = decode(fetch, 0, nullptr);
  const Table& orders = *d.tables.orders;
  CHECK_EQ(orders.num_rows, 4);
  CHECK(utf8_at(orders, kBatchId, 1) == "b-1" && utf8_at(orders, kBatchId, 2) == "b-2");
  CHECK(utf8_at(orders, kSource, 3) == "other");
  CHECK(valid(orders, kProducer, 1) && !valid(orders, kProducer, 2) && !valid(orders, kProducer, 3));
  CHECK_EQ(orders.columns[kProducer].null_count, 2);
  CHECK_EQ(d.next_offset, 4);
}

TEST(a_repeated_event_id_at_a_later_offset_is_dropped_and_decisions_repeat_on_a_re_read) {
  std::string fetch = orders_batch(request("b-1", 1, 3, false), 0, kCommon);
  fetch += orders_batch(request("b-1", 2, 3, false), 3, kCommon);  // e2, e3 again, then e4
  for (int pass = 0; pass < 2; ++pass) {
    LogDedup dedup(1000, 60000);
    DecodedRecords d = decode(fetch, 0, &dedup);
    CHECK_EQ(d.records, 6u);
    CHECK_EQ(d.duplicates, 2u);
    CHECK_EQ(d.orders, 4u);
    CHECK(utf8_at(*d.tables.orders, kEventId, 3) == "e4");
  }
  // Split into two calls at the batch boundary: the same decisions.
  LogDedup dedup(1000, 60000);
  const size_t first_batch = orders_batch(request("b-1", 1, 3, false), 0, kCommon).size();
  DecodedRecords a = decode(fetch.substr(0, first_batch), 0, &dedup);
  DecodedRecords b = decode(fetch.substr(first_batch), a.next_offset, &dedup);
  CHECK_EQ(a.orders + b.orders, 4u);
  CHECK_EQ(b.duplicates, 2u);
}

TEST(the_window_ends_exactly_at_window_records_and_window_ms) {
  // e1 at offset 0 and again at offset 10; with a window of 10 records it is
  // a duplicate, with 9 it is not.
  std::string fetch = orders_batch(request("b-1", 1, 1, false), 0, kCommon, Codec::kNone, 1000);
  fetch += orders_batch(request("b-1", 1, 1, false), 10, kCommon, Codec::kNone, 1500);
  for (int64_t records : {10, 9}) {
    LogDedup dedup(records, 500);
    CHECK_EQ(decode(fetch, 0, &dedup).duplicates, records == 10 ? 1u : 0u);
  }
  LogDedup tight(10, 499);  // 500 ms apart
  CHECK_EQ(decode(fetch, 0, &tight).duplicates, 0u);
}

TEST(records_before_first_offset_and_control_batches_are_skipped) {
  std::string fetch = orders_batch(request("b-1", 1, 4, false), 100, kCommon);
  // A transaction marker after it: attributes bit 5, CRC recomputed.
  std::string marker = orders_batch(request("b-9", 9, 1, false), 104, kCommon, Codec::kNone);
  marker[22] = static_cast<char>(marker[22] | 0x20);
  const uint32_t crc = crc32c(bytes(marker) + 21, marker.size() - 21);
  for (size_t i = 0; i < 4; ++i) marker[17 + i] = static_cast<char>(crc >> (24 - 8 * i));
  fetch += marker;
  LogDedup dedup(1000, 1000);
  DecodedRecords d = decode(fetch, 102, &dedup);
  CHECK_EQ(d.records, 2u);
  CHECK(utf8_at(*d.tables.orders, kEventId, 0) == "e3");
  CHECK_EQ(d.next_offset, 105);
  CHECK_EQ(d.consumed, fetch.size());
  CHECK_EQ(dedup.last_offset(), 103);
}

TEST(a_batch_cut_short_is_left_for_the_next_fetch) {
  const std::string one = orders_batch(request("b-1", 1, 2, false), 0, kCommon);
  const std::string fetch = one + orders_batch(request("b-1", 3, 2, false), 2, kCommon).substr(0, 70);
  DecodedRecords d = decode(fetch, 0, nullptr);
  CHECK_EQ(d.records, 2u);
  CHECK_EQ(d.next_offset, 2);
  CHECK_EQ(d.consumed, one.size());
  DecodedRecords none = decode(fetch.substr(one.size()), 2, nullptr);
  CHECK_EQ(none.next_offset, 2);
  CHECK_EQ(none.consumed, 0u);
  CHECK_EQ(none.records, 0u);
}

TEST(an_undecodable_value_and_a_rejected_order_are_quarantined_in_log_order) {
  RecordBatchBuilder b(Codec::kLz4, 0, 1 << 20);
  const std::string good = order("e1", "o1");
  const std::string rejected = lfield(1, "e2") + lfield(2, "o2");  // no customer_id
  const std::string broken = good.substr(0, good.size() - 3);
  const RecordHeader h1[] = {{"event_id", "e1"}, {"batch_id", "b-1"}, {"source", "s"}};
  const RecordHeader h2[] = {{"event_id", "e2"}, {"batch_id", "b-1"}, {"source", "s"}};
  const RecordHeader h3[] = {{"event_id", "e3"}, {"batch_id", "b-1"}, {"source", "s"}, {"producer", "p"}};
  const RecordHeader h4[] = {{"event_id", "e4"}, {"source", "s"}};  // no batch_id
  b.append(5000, nullptr, rejected, h2, 3);
  b.append(5000, nullptr, broken, h3, 4);
  b.append(5000, nullptr, good, h1, 3);
  b.append(5000, nullptr, good, h4, 2);
  const std::string fetch = finished(b, 7);
  DecodedRecords d = decode(fetch, 0, nullptr);
  CHECK_EQ(d.orders, 1u);
  CHECK_EQ(d.quarantined, 3u);
  const Table& q = *d.quarantine;
  CHECK_EQ(q.num_rows, 3);
  CHECK(utf8_at(q, kQReason, 0) == "customer_id_empty");
  CHECK(utf8_at(q, kQMessage, 0) == "Kafka offset 7: customer_id is empty");
  CHECK(utf8_at(q, kQReason, 1) == "undecodable");
  CHECK(utf8_at(q, kQMessage, 1).rfind("Kafka offset 8: the value is not an Order: ", 0) == 0);
  CHECK(utf8_at(q, kQMessage, 1).find("at byte") != std::string::npos);
  CHECK(utf8_at(q, kQRaw, 1) == broken);
  CHECK(utf8_at(q, kQEventId, 1) == "e3" && utf8_at(q, kQProducer, 1) == "p" && valid(q, kQProducer, 1));
  CHECK(!valid(q, kQProducer, 0));
  CHECK_EQ(value_at<int32_t>(q, kQIndex, 1), -1);
  CHECK_EQ(value_at<int64_t>(q, kQReceivedAt, 1), int64_t{5000000});
  CHECK(utf8_at(q, kQReason, 2) == "batch_id_empty" && utf8_at(q, kQBatchId, 2).empty());
}

TEST(corrupt_input_is_refused_with_its_offset_and_leaves_the_window_alone) {
  std::string fetch = orders_batch(request("b-1", 1, 2, false), 0, kCommon);
  const size_t first = fetch.size();
  fetch += orders_batch(request("b-1", 3, 2, false), 2, kCommon);
  fetch[fetch.size() - 1] ^= 1;
  LogDedup dedup(1000, 1000);
  DecodedRecords out;
  Error error;
  CHECK_EQ(decode_order_records(bytes(fetch), fetch.size(), 0, kNoEndOffset, 1 << 24, &dedup, ProcessOptions{}, &out,
                                &error),
           Code::kCorruptRecordBatch);
  CHECK_EQ(error.offset, static_cast<int64_t>(first + 17));
  CHECK_EQ(dedup.last_offset(), -1);
  // Offsets that go backwards are as corrupt.
  std::string backwards = orders_batch(request("b-1", 1, 2, false), 10, kCommon);
  backwards += orders_batch(request("b-1", 3, 2, false), 5, kCommon);
  CHECK_EQ(decode_order_records(bytes(backwards), backwards.size(), 0, kNoEndOffset, 1 << 24, &dedup, ProcessOptions{},
                                &out, &error),
           Code::kCorruptRecordBatch);
  CHECK(error.message.find("starts before the end of the one before") != std::string::npos);
}

TEST(a_re_read_without_reset_is_refused) {
  const std::string fetch = orders_batch(request("b-1", 1, 2, false), 0, kCommon);
  LogDedup dedup(1000, 1000);
  decode(fetch, 0, &dedup);
  DecodedRecords out;
  Error error;
  CHECK_EQ(decode_order_records(bytes(fetch), fetch.size(), 0, kNoEndOffset, 1 << 24, &dedup, ProcessOptions{}, &out,
                                &error),
           Code::kOffsetOutOfOrder);
  dedup.reset();
  CHECK_EQ(decode(fetch, 0, &dedup).orders, 2u);
}

TEST(dead_letter_records_become_quarantine_rows_deduped_by_batch_and_index) {
  const std::string raw = request("b-7", 1, 2, true);
  BatchOutput out = process(raw);
  std::string fetch;
  for (int64_t base : {20, 21}) {  // the same reject published twice
    RecordBatchBuilder b(Codec::kSnappy, 0, 1 << 20);
    CHECK_EQ(append_rejects(&b, out, bytes(raw), 0, 1700000000123, kCommon), 1u);
    fetch += finished(b, base);
  }
  LogDedup dedup(100, 1000);
  DecodedRecords d;
  Error error;
  CHECK_EQ(decode_reject_records(bytes(fetch), fetch.size(), 0, kNoEndOffset, 1 << 24, &dedup, &d, &error), Code::kOk);
  CHECK_EQ(d.records, 2u);
  CHECK_EQ(d.duplicates, 1u);
  CHECK_EQ(d.quarantined, 1u);
  CHECK(d.tables.orders == nullptr && d.tables.child_counts->num_rows == 0);
  const Table& q = *d.quarantine;
  CHECK(utf8_at(q, kQBatchId, 0) == "b-1");  // the record's header, as published
  CHECK_EQ(value_at<int32_t>(q, kQIndex, 0), 2);
  CHECK(utf8_at(q, kQEventId, 0) == "bad");
  CHECK(utf8_at(q, kQReason, 0) == "customer_id_empty");
  CHECK(utf8_at(q, kQMessage, 0) == "customer_id is empty");
  CHECK(utf8_at(q, kQProducer, 0) == "svc-a");
  CHECK_EQ(value_at<int64_t>(q, kQReceivedAt, 0), int64_t{1700000000123000});
  CHECK_EQ(d.next_offset, 22);
}
