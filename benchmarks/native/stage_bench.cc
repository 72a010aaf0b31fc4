// The native core's stages timed one by one: decode, validate, dedup, Arrow
// encode and export of the spans and rejects (what the server's
// Core(bronze_tables=False) builds; their sum is what Core.process costs
// there, less the GIL release and the result object), then the Kafka record batches of the
// batch: the records encoded from the request, one batch per partition of 6
// (kafka_records), compressed with zstd level 1, stamped and checksummed
// (kafka_compress); then the Bronze consumer's side: those record batches
// read back as one partition's fetch, with the offsets a broker gives them,
// and decoded into Bronze's tables (bronze_decode: CRC, zstd, records,
// dedup in a full 1,000,000-record log window, Order decode, validation,
// Arrow encode).
//
// Input: a file of template batches (u32 little-endian length, then the
// bytes), whose event_ids carry the placeholder "~~~~~~~~" (benchmarks/corpus.py).
// Every round copies a template and writes a fresh 8-hex-digit tag over its
// placeholders, so every order is new to the dedup window. The window has the
// server's default size (1,000,000 keys) and is filled before timing, so each
// insert evicts the oldest key: the steady state of a long-running server.
//
// Output: one JSON object per stage: {"stage", "ns_per_batch" (median),
// "ns_per_order", "orders"}.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "keystone/arrow.h"
#include "keystone/arrow_abi.h"
#include "keystone/bronze_decode.h"
#include "keystone/decode.h"
#include "keystone/dedup.h"
#include "keystone/pipeline.h"
#include "keystone/records.h"
#include "keystone/validate.h"

using namespace keystone;
using Clock = std::chrono::steady_clock;

namespace {

struct Template {
  std::vector<uint8_t> bytes;
  std::vector<size_t> tag_offsets;  // where "~~~~~~~~" starts
};

std::vector<Template> read_templates(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<Template> out;
  static const char kPlaceholder[] = "~~~~~~~~";
  for (size_t at = 0; at + 4 <= data.size();) {
    uint32_t n;
    std::memcpy(&n, data.data() + at, 4);
    Template t;
    t.bytes.assign(data.begin() + at + 4, data.begin() + at + 4 + n);
    for (size_t i = 0; i + 8 <= t.bytes.size(); ++i) {
      if (std::memcmp(t.bytes.data() + i, kPlaceholder, 8) == 0) {
        t.tag_offsets.push_back(i);
        i += 7;
      }
    }
    out.push_back(std::move(t));
    at += 4 + n;
  }
  return out;
}

void retag(Template& t, uint32_t round) {
  char tag[9];
  std::snprintf(tag, sizeof tag, "%08x", round);
  for (size_t off : t.tag_offsets) std::memcpy(t.bytes.data() + off, tag, 8);
}

double ns_since(Clock::time_point start) {
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TEMPLATES_FILE [ROUNDS]\n", argv[0]);
    return 2;
  }
  std::vector<Template> templates = read_templates(argv[1]);
  if (templates.empty()) {
    std::fprintf(stderr, "no templates in %s\n", argv[1]);
    return 2;
  }
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 400;
  DecodeLimits limits;
  ValidationOptions validation;
  DedupWindow window(DedupOptions{});
  BatchView view;
  Error error;
  std::vector<double> t_decode, t_validate, t_dedup, t_encode, t_export, t_records, t_compress, t_bronze;
  uint32_t tag = 0;
  size_t orders_per_batch = 0;
  size_t records_per_fetch = 0;
  LogDedup log_window(1000000, 3600 * 1000);
  int64_t log_end = 0;  // the partition's next offset
  std::string fetch;
  // Enough untimed rounds to fill the window first.
  size_t orders_seen = 0;
  for (int r = -1; r < rounds; ++r) {
    const bool timed = r >= 0;
    Template& t = templates[tag % templates.size()];
    retag(t, tag++);
    auto start = Clock::now();
    if (decode_batch(t.bytes.data(), t.bytes.size(), limits, &view, &error) != Code::kOk) {
      std::fprintf(stderr, "decode failed: %s\n", error.message.c_str());
      return 1;
    }
    const double decode_ns = ns_since(start);
    start = Clock::now();
    std::vector<Verdict> verdicts;
    std::vector<Rejection> rejections;
    if (validate_batch(view, validation, &error) != Code::kOk) return 1;
    validate_orders(view, validation, &verdicts, &rejections);
    if (check_encodable(view, verdicts, &error) != Code::kOk) return 1;
    const double validate_ns = ns_since(start);
    start = Clock::now();
    std::vector<Key128> inserted;
    dedup_orders(view, &window, /*now_ms=*/1, &verdicts, &inserted);
    const double dedup_ns = ns_since(start);
    start = Clock::now();
    EncodedBatch encoded;
    // As the server does: spans and rejects only (Bronze decodes its rows from Kafka).
    encode_tables(view, verdicts, rejections, /*bronze_tables=*/false, &encoded);
    const double encode_ns = ns_since(start);
    start = Clock::now();
    for (const auto& table : encoded.tables) {
      if (!table) continue;
      ArrowArray array;
      export_table(table, &array);
      array.release(&array);
    }
    const double export_ns = ns_since(start);
    // The Kafka sink's work: the records of each of 6 partitions, then each
    // record batch compressed and stamped as aiokafka sends it.
    BatchOutput out;
    out.tables = encoded;
    out.input_bytes = t.bytes.size();
    constexpr int32_t kPartitions = 6;
    const std::vector<RecordHeader> common = {
        {"batch_id", "b-00000001"}, {"source", "bench"}, {"content-type", "application/x-protobuf"}};
    start = Clock::now();
    std::vector<RecordBatchBuilder> builders;
    builders.reserve(kPartitions);
    for (int32_t p = 0; p < kPartitions; ++p) {
      builders.emplace_back(Codec::kZstd, 1, 512 * 1024);
      append_orders(&builders.back(), out, t.bytes.data(), p, kPartitions, 0, 1700000000000, common);
    }
    const double records_ns = ns_since(start);
    start = Clock::now();
    for (auto& b : builders) {
      if (b.finish(&error) != Code::kOk) return 1;
      b.set_producer_state(1, 0, 0);
      b.batch();  // the CRC, computed when the bytes are taken
    }
    const double compress_ns = ns_since(start);
    // The Bronze consumer: the batches back to back as one partition's log.
    fetch.clear();
    const int64_t fetch_from = log_end;
    for (auto& b : builders) {
      if (b.record_count() == 0) continue;
      const size_t at = fetch.size();
      fetch.append(reinterpret_cast<const char*>(b.batch().data()), b.batch().size());
      for (int i = 0; i < 8; ++i) {  // the base offset the broker assigns (outside the CRC)
        fetch[at + static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(log_end) >> (56 - 8 * i));
      }
      log_end += b.record_count();
    }
    start = Clock::now();
    DecodedRecords decoded;
    if (decode_order_records(reinterpret_cast<const uint8_t*>(fetch.data()), fetch.size(), fetch_from, kNoEndOffset,
                             64 << 20, &log_window, ProcessOptions{}, &decoded, &error) != Code::kOk) {
      std::fprintf(stderr, "bronze decode failed: %s\n", error.message.c_str());
      return 1;
    }
    const double bronze_ns = ns_since(start);
    orders_seen += view.orders.size();
    if (!timed && orders_seen < DedupOptions{}.max_keys + 10000) {
      r = -2;  // keep filling
      continue;
    }
    if (!timed) continue;
    orders_per_batch = view.orders.size();
    t_decode.push_back(decode_ns);
    t_validate.push_back(validate_ns);
    t_dedup.push_back(dedup_ns);
    t_encode.push_back(encode_ns);
    t_export.push_back(export_ns);
    t_records.push_back(records_ns);
    t_compress.push_back(compress_ns);
    t_bronze.push_back(bronze_ns);
    records_per_fetch = decoded.records;
  }
  const struct {
    const char* name;
    std::vector<double>* times;
    size_t orders;
  } stages[] = {{"decode", &t_decode, orders_per_batch},
                {"validate", &t_validate, orders_per_batch},
                {"dedup", &t_dedup, orders_per_batch},
                {"arrow_encode", &t_encode, orders_per_batch},
                {"arrow_export", &t_export, orders_per_batch},
                {"kafka_records", &t_records, orders_per_batch},
                {"kafka_compress", &t_compress, orders_per_batch},
                {"bronze_decode", &t_bronze, records_per_fetch}};
  for (const auto& s : stages) {
    const double m = median(*s.times);
    std::printf("{\"stage\": \"%s\", \"ns_per_batch\": %.0f, \"ns_per_order\": %.2f, \"orders\": %zu}\n", s.name, m,
                m / s.orders, s.orders);
  }
  return 0;
}
