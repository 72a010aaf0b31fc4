#include "keystone/records.h"

#include <charconv>
#include <cstring>

namespace keystone {
namespace {

// PERF NOTES: records are encoded once, straight into one growing buffer;
// each varint is written in place (at most 10 bytes) and the record's own
// length, known only at its end, is written into the few bytes reserved for
// it before, then the record is moved down when the length took fewer.

// clang-analyzer 14 loses the widening of count_ (uint32_t) to int64_t on
// some paths and then takes the shift by 63 as wider than the value.
// NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult)
inline uint64_t zigzag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }

inline size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

inline uint8_t* put_varint(uint8_t* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}

inline uint8_t* put_zz(uint8_t* p, int64_t v) { return put_varint(p, zigzag(v)); }

inline uint8_t* put_bytes(uint8_t* p, std::string_view s) {
  p = put_zz(p, static_cast<int64_t>(s.size()));
  if (!s.empty()) std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

template <typename T>
void put_be(uint8_t* p, T v) {
  using U = std::make_unsigned_t<T>;
  U u = static_cast<U>(v);
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<uint8_t>(u >> (8 * (sizeof(T) - 1 - i)));
}

std::string_view utf8_at(const Column& column, int64_t row) {
  const auto* offsets = reinterpret_cast<const int32_t*>(column.values.data());
  return {reinterpret_cast<const char*>(column.data.data()) + offsets[row],
          static_cast<size_t>(offsets[row + 1] - offsets[row])};
}

template <typename T>
T value_at(const Column& column, int64_t row) {
  T v;
  std::memcpy(&v, column.values.data() + row * sizeof(T), sizeof(T));
  return v;
}

// Column positions, fixed by the table definitions in arrow.cc.
constexpr int kSpanOffset = 0, kSpanLength = 1, kSpanKeyHash = 2, kSpanEventIdOffset = 6, kSpanEventIdLength = 7,
              kSpanOrderIdOffset = 8, kSpanOrderIdLength = 9;
constexpr int kRejectIndex = 0, kRejectEventId = 1, kRejectReason = 2, kRejectMessage = 3, kRejectOffset = 4,
              kRejectLength = 5;

const Table& table_of(const BatchOutput& out, TableId id) { return *out.tables.tables[static_cast<size_t>(id)]; }

// Callers pass the request the batch was made from (out.input_bytes long),
// so every span lies inside it.
std::string_view slice(const uint8_t* raw, int64_t offset, int32_t length) {
  return {reinterpret_cast<const char*>(raw) + offset, static_cast<size_t>(length)};
}

}  // namespace

RecordBatchBuilder::RecordBatchBuilder(Codec codec, int level, size_t max_bytes)
    : codec_(codec), level_(level), max_bytes_(max_bytes) {}

bool RecordBatchBuilder::append(int64_t timestamp_ms, const std::string_view* key, std::string_view value,
                                const RecordHeader* headers, size_t header_count) {
  if (finished_) return false;
  if (count_ == 0) base_timestamp_ = max_timestamp_ = timestamp_ms;
  const int64_t timestamp_delta = timestamp_ms - base_timestamp_;
  // Upper bound of the record's body, then its exact size once written.
  size_t bound = 1 + 10 + 5 + 5 + (key != nullptr ? key->size() : 0) + 5 + value.size() + 5;
  for (size_t h = 0; h < header_count; ++h) bound += 10 + headers[h].key.size() + headers[h].value.size();
  if (count_ > 0 && kRecordBatchHeaderBytes + records_.size() + bound + 5 > max_bytes_) {
    // Only an upper bound passed the limit: measure exactly before refusing.
    size_t exact = 1 + varint_size(zigzag(timestamp_delta)) + varint_size(zigzag(count_)) +
                   (key != nullptr ? varint_size(zigzag(static_cast<int64_t>(key->size()))) + key->size() : 1) +
                   varint_size(zigzag(static_cast<int64_t>(value.size()))) + value.size() +
                   varint_size(zigzag(static_cast<int64_t>(header_count)));
    for (size_t h = 0; h < header_count; ++h) {
      exact += varint_size(zigzag(static_cast<int64_t>(headers[h].key.size()))) + headers[h].key.size() +
               varint_size(zigzag(static_cast<int64_t>(headers[h].value.size()))) + headers[h].value.size();
    }
    if (kRecordBatchHeaderBytes + records_.size() + varint_size(zigzag(static_cast<int64_t>(exact))) + exact >
        max_bytes_) {
      return false;
    }
  }
  constexpr size_t kLengthRoom = 5;  // a record of up to 2 GiB: its length varint takes at most 5 bytes
  const size_t start = records_.size();
  uint8_t* const body = records_.extend(kLengthRoom + bound) + kLengthRoom;
  uint8_t* p = body;
  *p++ = 0;  // record attributes: unused
  p = put_zz(p, timestamp_delta);
  p = put_zz(p, count_);  // offset delta
  if (key != nullptr) {
    p = put_bytes(p, *key);
  } else {
    p = put_zz(p, -1);
  }
  p = put_bytes(p, value);
  p = put_zz(p, static_cast<int64_t>(header_count));
  for (size_t h = 0; h < header_count; ++h) {
    p = put_bytes(p, headers[h].key);
    p = put_bytes(p, headers[h].value);
  }
  const size_t body_size = static_cast<size_t>(p - body);
  uint8_t length[10];
  const size_t length_size = static_cast<size_t>(put_zz(length, static_cast<int64_t>(body_size)) - length);
  uint8_t* const record = records_.data() + start;
  std::memmove(record + length_size, record + kLengthRoom, body_size);
  std::memcpy(record, length, length_size);
  records_.truncate(start + length_size + body_size);
  if (timestamp_ms > max_timestamp_) max_timestamp_ = timestamp_ms;
  ++count_;
  return true;
}

Code RecordBatchBuilder::finish(Error* error) {
  if (finished_) return Code::kOk;
  batch_.reserve(kRecordBatchHeaderBytes + records_.size() / 2);
  uint8_t* header = batch_.extend(kRecordBatchHeaderBytes);
  std::memset(header, 0, kRecordBatchHeaderBytes);
  KS_TRY(compress(codec_, level_, records_.data(), records_.size(), &batch_, error));
  header = batch_.data();                                                 // compress may have moved the buffer
  put_be<int64_t>(header + 0, 0);                                         // base offset
  put_be<int32_t>(header + 8, static_cast<int32_t>(batch_.size() - 12));  // batch length
  put_be<int32_t>(header + 12, -1);                                       // partition leader epoch
  header[16] = 2;                                                         // magic
  put_be<int16_t>(header + 21, static_cast<int16_t>(codec_));             // attributes: codec, CreateTime
  put_be<int32_t>(header + 23, static_cast<int32_t>(count_ == 0 ? 0 : count_ - 1));  // last offset delta
  put_be<int64_t>(header + 27, base_timestamp_);
  put_be<int64_t>(header + 35, max_timestamp_);
  put_be<int32_t>(header + 57, static_cast<int32_t>(count_));
  records_.reset();
  finished_ = true;
  set_producer_state(-1, -1, -1);
  return Code::kOk;
}

void RecordBatchBuilder::set_producer_state(int64_t producer_id, int16_t producer_epoch, int32_t base_sequence) {
  uint8_t* header = batch_.data();
  put_be<int64_t>(header + 43, producer_id);
  put_be<int16_t>(header + 51, producer_epoch);
  put_be<int32_t>(header + 53, base_sequence);
  crc_current_ = false;
}

const Buffer& RecordBatchBuilder::batch() {
  if (finished_ && !crc_current_) {
    put_be<uint32_t>(batch_.data() + 17, crc32c(batch_.data() + 21, batch_.size() - 21));
    crc_current_ = true;
  }
  return batch_;
}

size_t append_orders(RecordBatchBuilder* builder, const BatchOutput& out, const uint8_t* raw, int32_t partition,
                     int32_t partitions, size_t from, int64_t timestamp_ms, const std::vector<RecordHeader>& common) {
  const Table& spans = table_of(out, TableId::kOrderSpans);
  const size_t rows = static_cast<size_t>(spans.num_rows);
  std::vector<RecordHeader> headers(1 + common.size());
  std::copy(common.begin(), common.end(), headers.begin() + 1);
  headers[0].key = "event_id";
  for (size_t row = from; row < rows; ++row) {
    const auto r = static_cast<int64_t>(row);
    const auto hash = static_cast<uint32_t>(value_at<int32_t>(spans.columns[kSpanKeyHash], r));
    if (static_cast<int32_t>(hash % static_cast<uint32_t>(partitions)) != partition) continue;
    const std::string_view key = slice(raw, value_at<int64_t>(spans.columns[kSpanOrderIdOffset], r),
                                       value_at<int32_t>(spans.columns[kSpanOrderIdLength], r));
    headers[0].value = slice(raw, value_at<int64_t>(spans.columns[kSpanEventIdOffset], r),
                             value_at<int32_t>(spans.columns[kSpanEventIdLength], r));
    const std::string_view value =
        slice(raw, value_at<int64_t>(spans.columns[kSpanOffset], r), value_at<int32_t>(spans.columns[kSpanLength], r));
    if (!builder->append(timestamp_ms, &key, value, headers.data(), headers.size())) return row;
  }
  return rows;
}

size_t append_rejects(RecordBatchBuilder* builder, const BatchOutput& out, const uint8_t* raw, size_t from,
                      int64_t timestamp_ms, const std::vector<RecordHeader>& common) {
  const Table& rejects = table_of(out, TableId::kRejects);
  const size_t rows = static_cast<size_t>(rejects.num_rows);
  std::vector<RecordHeader> headers(4 + common.size());
  headers[0].key = "event_id";
  std::copy(common.begin(), common.end(), headers.begin() + 1);
  headers[1 + common.size()].key = "error.reason";
  headers[2 + common.size()].key = "error.index";
  headers[3 + common.size()].key = "error.message";
  char index[12];
  for (size_t row = from; row < rows; ++row) {
    const auto r = static_cast<int64_t>(row);
    headers[0].value = utf8_at(rejects.columns[kRejectEventId], r);
    headers[1 + common.size()].value = utf8_at(rejects.columns[kRejectReason], r);
    const auto written =
        std::to_chars(index, index + sizeof(index), value_at<int32_t>(rejects.columns[kRejectIndex], r));
    headers[2 + common.size()].value = std::string_view(index, static_cast<size_t>(written.ptr - index));
    headers[3 + common.size()].value = utf8_at(rejects.columns[kRejectMessage], r);
    const std::string_view value = slice(raw, value_at<int64_t>(rejects.columns[kRejectOffset], r),
                                         value_at<int32_t>(rejects.columns[kRejectLength], r));
    if (!builder->append(timestamp_ms, nullptr, value, headers.data(), headers.size())) return row;
  }
  return rows;
}

std::vector<uint32_t> partition_counts(const BatchOutput& out, int32_t partitions) {
  std::vector<uint32_t> counts(static_cast<size_t>(partitions), 0);
  const Table& spans = table_of(out, TableId::kOrderSpans);
  for (int64_t r = 0; r < spans.num_rows; ++r) {
    const auto hash = static_cast<uint32_t>(value_at<int32_t>(spans.columns[kSpanKeyHash], r));
    ++counts[hash % static_cast<uint32_t>(partitions)];
  }
  return counts;
}

// -- reading

namespace {

KS_COLD Code corrupt(Error* error, int64_t offset, const std::string& message) {
  if (error != nullptr) {
    error->code = Code::kCorruptRecordBatch;
    error->offset = offset;
    error->message = message;
  }
  return Code::kCorruptRecordBatch;
}

template <typename T>
T get_be(const uint8_t* p) {
  using U = std::make_unsigned_t<T>;
  U u = 0;
  for (size_t i = 0; i < sizeof(T); ++i) u = static_cast<U>((u << 8) | p[i]);
  return static_cast<T>(u);
}

inline int64_t wrapping_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

// Bounds-checked reads over one batch's records; every failure is "corrupt".
struct Cursor {
  const uint8_t* p;
  const uint8_t* end;

  bool varint(int64_t* out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p == end) return false;
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        *out = static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1);
        return true;
      }
    }
    return false;
  }
  // A length-prefixed field; -1 means null (allowed only where `nullable`).
  bool bytes(std::string_view* out, bool* present, bool nullable) {
    int64_t len = 0;
    if (!varint(&len)) return false;
    if (len < 0) {
      if (len != -1 || !nullable) return false;
      *present = false;
      *out = {};
      return true;
    }
    if (static_cast<uint64_t>(len) > static_cast<uint64_t>(end - p)) return false;
    *out = {reinterpret_cast<const char*>(p), static_cast<size_t>(len)};
    *present = true;
    p += len;
    return true;
  }
};

}  // namespace

Code read_record_batches(const uint8_t* data, size_t n, size_t max_batch_bytes, RecordSet* out, Error* error) {
  size_t at = 0;
  while (n - at >= kRecordBatchHeaderBytes) {
    const uint8_t* h = data + at;
    const int32_t length = get_be<int32_t>(h + 8);
    if (length < static_cast<int32_t>(kRecordBatchHeaderBytes - 12)) {
      return corrupt(error, static_cast<int64_t>(at),
                     "record batch length " + std::to_string(length) + " is shorter than its header");
    }
    const size_t total = 12 + static_cast<size_t>(length);
    if (total > n - at) break;  // cut short by the fetch: read it next time
    if (h[16] != 2) return corrupt(error, static_cast<int64_t>(at + 16), "magic " + std::to_string(h[16]) + ", not 2");
    const uint32_t crc = get_be<uint32_t>(h + 17);
    if (crc32c(h + 21, total - 21) != crc)
      return corrupt(error, static_cast<int64_t>(at + 17), "CRC32C does not match");
    RecordBatchInfo info;
    const int16_t attributes = get_be<int16_t>(h + 21);
    info.codec = static_cast<Codec>(attributes & 0x7);
    if (attributes & 0x7) {
      if ((attributes & 0x7) > static_cast<int>(Codec::kZstd)) {
        return corrupt(error, static_cast<int64_t>(at + 21), "unknown codec " + std::to_string(attributes & 0x7));
      }
    }
    info.transactional = (attributes & 0x10) != 0;
    info.control = (attributes & 0x20) != 0;
    info.base_offset = get_be<int64_t>(h);
    const int64_t base_timestamp = get_be<int64_t>(h + 27);
    info.last_offset_delta = get_be<int32_t>(h + 23);
    info.size = total;
    info.producer_id = get_be<int64_t>(h + 43);
    info.producer_epoch = get_be<int16_t>(h + 51);
    info.base_sequence = get_be<int32_t>(h + 53);
    const int32_t count = get_be<int32_t>(h + 57);
    if (count < 0) return corrupt(error, static_cast<int64_t>(at + 57), "negative record count");
    info.first_record = static_cast<uint32_t>(out->records.size());
    if (!info.control && count > 0) {
      const uint8_t* body = h + kRecordBatchHeaderBytes;
      size_t body_size = total - kRecordBatchHeaderBytes;
      if (info.codec != Codec::kNone) {
        Buffer plain;
        if (decompress(info.codec, body, body_size, max_batch_bytes, &plain, error) != Code::kOk) {
          if (error != nullptr) error->offset = static_cast<int64_t>(at);
          return Code::kCodec;
        }
        out->storage.push_back(std::move(plain));
        body = out->storage.back().data();
        body_size = out->storage.back().size();
      }
      Cursor c{body, body + body_size};
      for (int32_t i = 0; i < count; ++i) {
        int64_t record_length = 0;
        if (!c.varint(&record_length) || record_length < 0 ||
            static_cast<uint64_t>(record_length) > static_cast<uint64_t>(c.end - c.p)) {
          return corrupt(error, static_cast<int64_t>(at), "record " + std::to_string(i) + " runs past its batch");
        }
        Cursor r{c.p, c.p + record_length};
        c.p += record_length;
        Record rec;
        int64_t ts_delta = 0, offset_delta = 0, header_count = 0;
        bool present = false;
        if (r.p == r.end) return corrupt(error, static_cast<int64_t>(at), "record " + std::to_string(i) + " is empty");
        ++r.p;  // record attributes
        if (!r.varint(&ts_delta) || !r.varint(&offset_delta) || !r.bytes(&rec.key, &rec.has_key, true) ||
            !r.bytes(&rec.value, &present, true) || !r.varint(&header_count) || header_count < 0 ||
            header_count > (r.end - r.p) / 2) {
          return corrupt(error, static_cast<int64_t>(at), "record " + std::to_string(i) + " is malformed");
        }
        // Hostile deltas may overflow: the sums wrap rather than being undefined.
        rec.offset = wrapping_add(info.base_offset, offset_delta);
        rec.timestamp_ms = wrapping_add(base_timestamp, ts_delta);
        rec.first_header = static_cast<uint32_t>(out->headers.size());
        rec.header_count = static_cast<uint32_t>(header_count);
        for (int64_t k = 0; k < header_count; ++k) {
          RecordHeader header;
          bool key_present = false, value_present = false;
          if (!r.bytes(&header.key, &key_present, false) || !r.bytes(&header.value, &value_present, true)) {
            return corrupt(error, static_cast<int64_t>(at),
                           "header " + std::to_string(k) + " of record " + std::to_string(i) + " is malformed");
          }
          out->headers.push_back(header);
        }
        if (r.p != r.end)
          return corrupt(error, static_cast<int64_t>(at),
                         "record " + std::to_string(i) + " has bytes past its headers");
        out->records.push_back(rec);
      }
      if (c.p != c.end) return corrupt(error, static_cast<int64_t>(at), "bytes past the last record");
      info.record_count = static_cast<uint32_t>(count);
    }
    out->batches.push_back(info);
    at += total;
  }
  out->consumed = at;
  return Code::kOk;
}

}  // namespace keystone
