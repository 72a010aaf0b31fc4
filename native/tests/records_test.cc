#include "keystone/records.h"

#include <string>

#include "check.h"
#include "wire_builder.h"

using namespace keystone;
using namespace wirebuild;

namespace {

std::string str(std::string_view v) { return std::string(v); }

template <typename T>
T be(const uint8_t* p) {
  using U = std::make_unsigned_t<T>;
  U u = 0;
  for (size_t i = 0; i < sizeof(T); ++i) u = static_cast<U>((u << 8) | p[i]);
  return static_cast<T>(u);
}

RecordSet read(RecordBatchBuilder& b) {
  RecordSet set;
  Error error;
  CHECK_EQ(read_record_batches(b.batch().data(), b.batch().size(), 1 << 24, &set, &error), Code::kOk);
  return set;
}

// Three orders and one the core rejects, processed for real, as the server
// does: without the Bronze tables (records come from the spans and rejects).
BatchOutput processed(std::string* raw) {
  std::string bad = lfield(1, "e9") + lfield(2, "o9");  // no customer_id
  *raw = batch("b-1", lfield(3, order("e1", "o1")) + lfield(3, bad) + lfield(3, order("e2", "o2")) +
                          lfield(3, order("e3", "o3")));
  ProcessOptions options;
  options.bronze_tables = false;
  auto r = process_batch(bytes(*raw), raw->size(), options, nullptr, 0);
  CHECK(r.ok());
  return std::move(r.value());
}

}  // namespace

TEST(a_batch_has_kafkas_v2_header_and_its_records_read_back) {
  RecordBatchBuilder b(Codec::kNone, 0, 1 << 20);
  const std::string_view k1 = "order-1";
  const RecordHeader headers[] = {{"event_id", "e-1"}, {"source", "test"}};
  CHECK(b.append(1700000000123, &k1, "value-1", headers, 2));
  CHECK(b.append(1700000000100, nullptr, "", headers, 1));  // earlier timestamp, null key, empty value
  CHECK_EQ(b.record_count(), 2u);
  Error error;
  CHECK_EQ(b.finish(&error), Code::kOk);
  const uint8_t* h = b.batch().data();
  CHECK_EQ(be<int64_t>(h), 0);                                               // base offset
  CHECK_EQ(static_cast<size_t>(be<int32_t>(h + 8)), b.batch().size() - 12);  // batch length
  CHECK_EQ(be<int32_t>(h + 12), -1);                                         // partition leader epoch
  CHECK_EQ(static_cast<int>(h[16]), 2);                                      // magic
  CHECK_EQ(be<uint32_t>(h + 17), crc32c(h + 21, b.batch().size() - 21));
  CHECK_EQ(be<int16_t>(h + 21), 0);              // no codec, CreateTime
  CHECK_EQ(be<int32_t>(h + 23), 1);              // last offset delta
  CHECK_EQ(be<int64_t>(h + 27), 1700000000123);  // first timestamp
  CHECK_EQ(be<int64_t>(h + 35), 1700000000123);  // max timestamp
  CHECK_EQ(be<int64_t>(h + 43), -1);             // no producer yet
  CHECK_EQ(be<int16_t>(h + 51), -1);
  CHECK_EQ(be<int32_t>(h + 53), -1);
  CHECK_EQ(be<int32_t>(h + 57), 2);
  // The first record, byte for byte: its length (45, zigzag 0x5a), attributes,
  // timestamp and offset deltas, key, value, two headers.
  const std::string first(reinterpret_cast<const char*>(h + 61), 46);
  const std::string expected = std::string(
                                   "\x5a"
                                   "\x00"
                                   "\x00"
                                   "\x00",
                                   4) +
                               "\x0e"
                               "order-1"
                               "\x0e"
                               "value-1"
                               "\x04"
                               "\x10"
                               "event_id"
                               "\x06"
                               "e-1"
                               "\x0c"
                               "source"
                               "\x08"
                               "test";
  CHECK_EQ(expected.size(), 46u);
  CHECK(first == expected);

  RecordSet set = read(b);
  CHECK_EQ(set.batches.size(), 1u);
  CHECK_EQ(set.batches[0].last_offset_delta, 1);
  CHECK_EQ(set.batches[0].size, b.batch().size());
  CHECK_EQ(set.records.size(), 2u);
  CHECK_EQ(set.records[0].offset, 0);
  CHECK_EQ(set.records[1].offset, 1);
  CHECK_EQ(set.records[1].timestamp_ms, 1700000000100);
  CHECK(set.records[0].has_key && str(set.records[0].key) == "order-1");
  CHECK(!set.records[1].has_key);
  CHECK(str(set.records[0].value) == "value-1" && set.records[1].value.empty());
  CHECK_EQ(set.records[0].header_count, 2u);
  CHECK(str(set.headers[set.records[0].first_header + 1].value) == "test");
  CHECK_EQ(set.consumed, b.batch().size());
}

TEST(the_producer_state_is_stamped_and_the_crc_follows) {
  RecordBatchBuilder b(Codec::kZstd, 1, 1 << 20);
  const std::string_view key = "k";
  CHECK(b.append(1, &key, "v", nullptr, 0));
  Error error;
  CHECK_EQ(b.finish(&error), Code::kOk);
  const uint32_t unstamped = be<uint32_t>(b.batch().data() + 17);
  b.set_producer_state(4711, 3, 1000);
  const uint8_t* h = b.batch().data();
  CHECK_EQ(be<int64_t>(h + 43), 4711);
  CHECK_EQ(be<int16_t>(h + 51), 3);
  CHECK_EQ(be<int32_t>(h + 53), 1000);
  CHECK(be<uint32_t>(h + 17) != unstamped);
  RecordSet set = read(b);  // the reader checks the CRC
  CHECK_EQ(set.batches[0].producer_id, 4711);
  CHECK_EQ(set.batches[0].base_sequence, 1000);
  CHECK_EQ(static_cast<int>(set.batches[0].codec), static_cast<int>(Codec::kZstd));
}

TEST(a_full_builder_refuses_the_next_record_but_an_empty_one_takes_any) {
  RecordBatchBuilder b(Codec::kNone, 0, 200);
  const std::string big(500, 'x');
  const std::string_view key = "k";
  CHECK(b.append(1, &key, big, nullptr, 0));  // larger than the limit, alone
  CHECK(!b.append(1, &key, "small", nullptr, 0));
  CHECK_EQ(b.record_count(), 1u);
  RecordBatchBuilder c(Codec::kNone, 0, 200);
  int taken = 0;
  while (c.append(1, &key, "0123456789", nullptr, 0)) ++taken;
  CHECK(taken > 5);
  CHECK(c.size() <= 200);
  Error error;
  CHECK_EQ(c.finish(&error), Code::kOk);
  CHECK(c.batch().size() <= 200);
  CHECK(!c.append(1, &key, "late", nullptr, 0));  // finished
}

TEST(every_codec_builds_a_batch_that_reads_back) {
  for (Codec codec : {Codec::kNone, Codec::kGzip, Codec::kSnappy, Codec::kLz4, Codec::kZstd}) {
    RecordBatchBuilder b(codec, 0, 1 << 22);
    for (int i = 0; i < 2000; ++i) {
      const std::string key = "order-" + std::to_string(i);
      const std::string_view k = key;
      const RecordHeader h[] = {{"event_id", key}};
      CHECK(b.append(1000 + i, &k, "delivered;sao paulo;SP;" + key, h, 1));
    }
    Error error;
    CHECK_EQ(b.finish(&error), Code::kOk);
    RecordSet set = read(b);
    CHECK_EQ(set.records.size(), 2000u);
    CHECK(str(set.records[1999].key) == "order-1999");
    CHECK_EQ(set.records[1999].offset, 1999);
    CHECK_EQ(set.records[1999].timestamp_ms, 2999);
  }
}

TEST(orders_go_to_their_partitions_with_value_bytes_from_the_request) {
  std::string raw;
  BatchOutput out = processed(&raw);
  const auto counts = partition_counts(out, 2);
  CHECK_EQ(counts[0] + counts[1], 3u);
  const std::vector<RecordHeader> common = {{"batch_id", "b-1"}};
  size_t total = 0;
  for (int32_t p = 0; p < 2; ++p) {
    RecordBatchBuilder b(Codec::kNone, 0, 1 << 20);
    CHECK_EQ(append_orders(&b, out, bytes(raw), p, 2, 0, 42, common), 3u);
    CHECK_EQ(b.record_count(), counts[static_cast<size_t>(p)]);
    total += b.record_count();
    if (b.record_count() == 0) continue;
    Error error;
    CHECK_EQ(b.finish(&error), Code::kOk);
    RecordSet set = read(b);
    for (const Record& r : set.records) {
      CHECK(raw.find(str(r.value)) != std::string::npos);  // a slice of the request
      CHECK(str(set.headers[r.first_header].key) == "event_id");
      CHECK(str(set.headers[r.first_header + 1].value) == "b-1");
    }
  }
  CHECK_EQ(total, 3u);
}

TEST(a_full_builder_stops_at_the_row_to_continue_from) {
  std::string raw;
  BatchOutput out = processed(&raw);
  RecordBatchBuilder tiny(Codec::kNone, 0, 1);  // takes exactly one record
  CHECK_EQ(append_orders(&tiny, out, bytes(raw), 0, 1, 0, 1, {}), 1u);
  RecordBatchBuilder next(Codec::kNone, 0, 1);
  CHECK_EQ(append_orders(&next, out, bytes(raw), 0, 1, 1, 1, {}), 2u);
}

TEST(rejected_orders_carry_reason_index_and_message_and_no_key) {
  std::string raw;
  BatchOutput out = processed(&raw);
  RecordBatchBuilder b(Codec::kNone, 0, 1 << 20);
  CHECK_EQ(append_rejects(&b, out, bytes(raw), 0, 7, {{"batch_id", "b-1"}}), 1u);
  Error error;
  CHECK_EQ(b.finish(&error), Code::kOk);
  RecordSet set = read(b);
  CHECK_EQ(set.records.size(), 1u);
  const Record& r = set.records[0];
  CHECK(!r.has_key);
  CHECK_EQ(r.header_count, 5u);
  const RecordHeader* h = &set.headers[r.first_header];
  CHECK(str(h[0].key) == "event_id" && str(h[0].value) == "e9");
  CHECK(str(h[1].key) == "batch_id" && str(h[1].value) == "b-1");
  CHECK(str(h[2].key) == "error.reason" && str(h[2].value) == "customer_id_empty");
  CHECK(str(h[3].key) == "error.index" && str(h[3].value) == "1");
  CHECK(str(h[4].key) == "error.message" && str(h[4].value) == "customer_id is empty");
}

TEST(the_reader_leaves_a_batch_cut_short_and_refuses_a_corrupt_one) {
  RecordBatchBuilder b(Codec::kNone, 0, 1 << 20);
  const std::string_view key = "k";
  CHECK(b.append(1, &key, "v", nullptr, 0));
  Error error;
  CHECK_EQ(b.finish(&error), Code::kOk);
  std::string two(reinterpret_cast<const char*>(b.batch().data()), b.batch().size());
  two += two;
  RecordSet set;
  CHECK_EQ(read_record_batches(bytes(two), two.size() - 5, 1 << 20, &set, &error), Code::kOk);
  CHECK_EQ(set.batches.size(), 1u);
  CHECK_EQ(set.consumed, b.batch().size());
  std::string bad = two.substr(0, b.batch().size());
  bad[bad.size() - 1] ^= 1;
  RecordSet refused;
  CHECK_EQ(read_record_batches(bytes(bad), bad.size(), 1 << 20, &refused, &error), Code::kCorruptRecordBatch);
  CHECK(error.message == "CRC32C does not match");
  CHECK_EQ(error.offset, 17);
}
