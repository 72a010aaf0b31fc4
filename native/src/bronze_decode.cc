#include "keystone/bronze_decode.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "keystone/decode.h"
#include "keystone/dedup.h"
#include "keystone/records.h"
#include "keystone/validate.h"
#include "keystone/wire.h"

namespace keystone {
namespace {

// PERF NOTES: one pass over a batch's records decodes and checks them, a
// second observes the dedup window. Each value is copied once into one arena
// (a memcpy of a few hundred bytes), so the orders of a whole fetch form one
// BatchView that arrow.cc's encoder reads as it reads a request's. The
// lineage headers of consecutive records are nearly always the same (a
// server batch is hundreds of records in a row), so a record whose headers
// equal the previous one's reuses its checked copy. Headers are found in one
// scan, by length first. Nothing is allocated per record but vector growth.
//
// Orders are decoded before the window decides (a duplicate is dropped all
// the same, whatever its value) so that a batch's output is measured before
// the window is touched: a batch that would take a column past 2 GiB is left
// for the next call, and the window never sees records that were not kept.

// Every column, and the arena whose spans are 32-bit, stays within Arrow's
// 32-bit utf8 offsets.
constexpr uint64_t kMaxOutputBytes = INT32_MAX;
// Beyond this, base_offset + lastOffsetDelta + 1 could overflow.
constexpr int64_t kMaxBaseOffset = INT64_MAX - INT32_MAX - 1;
// The dead-letter dedup key: batch_id '\0' error.index, hashed apart from
// the order keys (dedup.cc's seeds).
constexpr uint64_t kRejectKeySeed = 0x646c712d6b657973ull;  // "dlq-keys"
// Status and payment type names are at most this long (arrow.cc).
constexpr uint64_t kMaxEnumNameBytes = 11;

KS_COLD Code fail(Error* error, Code code, int64_t offset, std::string message) {
  if (error != nullptr) {
    error->code = code;
    error->offset = offset;
    error->message = std::move(message);
  }
  return code;
}

struct HeaderView {
  std::string_view value;
  bool present = false;  // a header of that name with a non-null value
};

// The headers either topic's records carry; the first of each name counts.
struct RecordHeaders {
  HeaderView event_id, batch_id, source, producer, reason, index, message;
};

inline bool key_is(std::string_view key, const char* name, size_t n) { return std::memcmp(key.data(), name, n) == 0; }

RecordHeaders headers_of(const RecordSet& set, const Record& r) {
  RecordHeaders out;
  const RecordHeader* h = set.headers.data() + r.first_header;
  for (uint32_t i = 0; i < r.header_count; ++i) {
    const std::string_view key = h[i].key;
    HeaderView* slot = nullptr;
    // One line per header key, dispatched on its length.
    // clang-format off
    switch (key.size()) {
      case 6: if (key_is(key, "source", 6)) slot = &out.source; break;
      case 8:
        if (key_is(key, "event_id", 8)) slot = &out.event_id;
        else if (key_is(key, "batch_id", 8)) slot = &out.batch_id;
        else if (key_is(key, "producer", 8)) slot = &out.producer;
        break;
      case 11: if (key_is(key, "error.index", 11)) slot = &out.index; break;
      case 12: if (key_is(key, "error.reason", 12)) slot = &out.reason; break;
      case 13: if (key_is(key, "error.message", 13)) slot = &out.message; break;
      default: break;
    }
    // clang-format on
    if (slot != nullptr && !slot->present && h[i].value.data() != nullptr) *slot = HeaderView{h[i].value, true};
  }
  return out;
}

inline bool utf8(std::string_view s) { return wire::valid_utf8(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

// A header's value for a utf8 column of the quarantine: empty when it is
// missing or not UTF-8 (the raw value keeps the record's bytes).
inline std::string_view utf8_or_empty(const HeaderView& h) { return h.present && utf8(h.value) ? h.value : ""; }

inline int64_t micros(int64_t ms) {  // wraps rather than overflowing on hostile timestamps
  return static_cast<int64_t>(static_cast<uint64_t>(ms) * 1000u);
}

// A quarantine row's lineage, ids, bytes and time from its record; the caller
// sets why (reason, message) and, for the dead-letter topic, the index.
QuarantineRow quarantine_row(const Record& r, const RecordHeaders& h) {
  QuarantineRow q;
  q.batch_id = utf8_or_empty(h.batch_id);
  q.source = utf8_or_empty(h.source);
  q.producer = utf8_or_empty(h.producer);
  q.has_producer = h.producer.present && utf8(h.producer.value);
  q.event_id = utf8_or_empty(h.event_id);
  q.raw = r.value;
  q.received_at_us = micros(r.timestamp_ms);
  return q;
}

inline int64_t batch_end(const RecordBatchInfo& b) { return b.base_offset + b.last_offset_delta + 1; }

// The offsets a fetch claims, checked before anything is decoded or observed
// so that a refused fetch leaves the window as it was: batches in order, each
// record inside its batch's range, offsets increasing.
Code check_offsets(const RecordSet& set, Error* error) {
  size_t at = 0;
  int64_t previous_end = 0;
  int64_t previous_record = -1;
  for (const RecordBatchInfo& b : set.batches) {
    const auto where = static_cast<int64_t>(at);
    if (b.base_offset < 0 || b.base_offset > kMaxBaseOffset || b.last_offset_delta < 0) {
      return fail(
          error, Code::kCorruptRecordBatch, where,
          "record batch claims offsets " + std::to_string(b.base_offset) + " + " + std::to_string(b.last_offset_delta));
    }
    if (b.base_offset < previous_end) {
      return fail(error, Code::kCorruptRecordBatch, where,
                  "record batch at offset " + std::to_string(b.base_offset) +
                      " starts before the end of the one before (" + std::to_string(previous_end) + ")");
    }
    for (uint32_t i = b.first_record; i < b.first_record + b.record_count; ++i) {
      const int64_t offset = set.records[i].offset;
      if (offset < b.base_offset || offset >= batch_end(b) || offset <= previous_record) {
        return fail(error, Code::kCorruptRecordBatch, where,
                    "record offset " + std::to_string(offset) + " is outside its batch's " +
                        std::to_string(b.base_offset) + ".." + std::to_string(batch_end(b) - 1) +
                        " or not after the record before");
      }
      previous_record = offset;
    }
    previous_end = batch_end(b);
    at += b.size;
  }
  return Code::kOk;
}

// The window only moves forward: the first record to be read must come after
// the last one it observed.
Code check_window(const RecordSet& set, int64_t first_offset, const LogDedup* dedup, Error* error) {
  if (dedup == nullptr) return Code::kOk;
  for (const Record& r : set.records) {
    if (r.offset < first_offset) continue;
    if (r.offset <= dedup->last_offset()) {
      return fail(error, Code::kOffsetOutOfOrder, -1,
                  "record offset " + std::to_string(r.offset) + " is not after " +
                      std::to_string(dedup->last_offset()) +
                      ", the last offset the dedup window observed; reset() it to read offsets again");
    }
    break;
  }
  return Code::kOk;
}

// Records at or past `end_offset` are not read: the batch that holds the
// bound keeps only the records before it, and those after it are dropped.
// (Reading up to a bound is how a worker warms a dedup window on the offsets
// just before where it starts writing.)
void clip(RecordSet* set, int64_t end_offset) {
  size_t kept = 0;
  for (RecordBatchInfo& b : set->batches) {
    if (b.base_offset >= end_offset) break;
    uint32_t count = 0;
    while (count < b.record_count && set->records[b.first_record + count].offset < end_offset) ++count;
    b.record_count = count;
    ++kept;
  }
  set->batches.resize(kept);
}

KS_COLD Code too_large(Error* error, size_t at, const RecordBatchInfo& b) {
  return fail(error, Code::kBatchTooLarge, static_cast<int64_t>(at),
              "the record batch of offsets " + std::to_string(b.base_offset) + ".." + std::to_string(batch_end(b) - 1) +
                  " would build a column of 2 GiB or more");
}

std::string at_offset(int64_t offset) { return "Kafka offset " + std::to_string(offset) + ": "; }

// The orders topic, batch by batch: decode() reads and checks a batch's
// records into the view (or leaves it as it was when the batch would not
// fit), keep() lets the window decide and counts, encode() builds the tables.
class OrderRecords {
 public:
  OrderRecords(const RecordSet& set, int64_t first_offset, const ProcessOptions& options)
      : set_(set), first_offset_(first_offset), options_(options) {
    size_t bytes = 0;
    for (const Record& r : set.records) {
      if (r.offset >= first_offset) bytes += r.value.size();
    }
    arena_.reserve(std::min<size_t>(bytes + 4096, kMaxOutputBytes));
  }

  bool decode(const RecordBatchInfo& b);
  Code keep(const RecordBatchInfo& b, LogDedup* dedup, DecodedRecords* out, Error* error);
  void encode(DecodedRecords* out);

 private:
  struct Entry {  // one quarantined record
    uint32_t record;
    const char* reason;
    std::string message;
    bool dropped = false;  // a duplicate after all
  };
  struct Pending {  // a record of the batch being read
    uint32_t record;
    int32_t order;  // its row in the view, or -1
    HeaderView event_id;
  };

  void quarantine(uint32_t record, const char* reason, std::string message) {
    entries_.push_back(Entry{record, reason, std::move(message)});
  }
  bool lineage_of(const Record& r, const RecordHeaders& h, OrderLineage* out);
  uint32_t copy(std::string_view s) {
    const auto at = static_cast<uint32_t>(arena_.size());
    if (!s.empty()) std::memcpy(arena_.extend(s.size()), s.data(), s.size());
    return at;
  }
  uint64_t entry_bytes(const Entry& e) const;

  const RecordSet& set_;
  const int64_t first_offset_;
  const ProcessOptions& options_;
  Buffer arena_;  // the view's data: values and lineage of the orders read
  BatchView view_;
  std::vector<uint32_t> order_record_;  // row for row with view_.orders: its record
  std::vector<Verdict> verdicts_;
  std::vector<Rejection> rejections_;
  std::vector<Entry> entries_;
  std::vector<Pending> pending_;
  std::vector<Key128> keys_;  // pending_'s dedup keys
  uint64_t used_ = 0;         // output bytes of the batches kept
  // The last lineage headers seen and their checked copy in the arena.
  bool cached_ = false;
  HeaderView cached_headers_[3];
  OrderLineage cached_lineage_;
};

// The lineage of a record, checked (UTF-8, the batch rules) and copied into
// the arena; false when the record is quarantined for it.
bool OrderRecords::lineage_of(const Record& r, const RecordHeaders& h, OrderLineage* out) {
  const HeaderView* hs[3] = {&h.batch_id, &h.source, &h.producer};
  if (cached_) {
    bool same = true;
    for (int k = 0; k < 3 && same; ++k) {
      same = hs[k]->present == cached_headers_[k].present && hs[k]->value == cached_headers_[k].value;
    }
    if (same) {
      *out = cached_lineage_;
      return true;
    }
  }
  static const char* const kNames[3] = {"batch_id", "source", "producer"};
  for (int k = 0; k < 3; ++k) {
    if (hs[k]->present && !utf8(hs[k]->value)) {
      quarantine(static_cast<uint32_t>(&r - set_.records.data()), code_name(Code::kInvalidUtf8),
                 at_offset(r.offset) + "the " + kNames[k] + " header is not valid UTF-8");
      return false;
    }
  }
  Error error;
  if (validate_lineage(h.batch_id.value.size(), h.source.value.size(), options_.validation, &error) != Code::kOk) {
    quarantine(static_cast<uint32_t>(&r - set_.records.data()), code_name(error.code),
               at_offset(r.offset) + error.message);
    return false;
  }
  out->batch_id = Span{copy(h.batch_id.value), static_cast<uint32_t>(h.batch_id.value.size())};
  out->source = Span{copy(h.source.value), static_cast<uint32_t>(h.source.value.size())};
  out->producer = Span{copy(h.producer.value), static_cast<uint32_t>(h.producer.value.size())};
  out->has_producer = h.producer.present;
  cached_ = true;
  for (int k = 0; k < 3; ++k) cached_headers_[k] = *hs[k];
  cached_lineage_ = *out;
  return true;
}

uint64_t OrderRecords::entry_bytes(const Entry& e) const {
  const Record& r = set_.records[e.record];
  const RecordHeaders h = headers_of(set_, r);
  return h.batch_id.value.size() + h.source.value.size() + h.producer.value.size() + h.event_id.value.size() +
         std::strlen(e.reason) + e.message.size() + r.value.size();
}

bool OrderRecords::decode(const RecordBatchInfo& b) {
  const size_t orders0 = view_.orders.size(), items0 = view_.items.size(), payments0 = view_.payments.size();
  const size_t arena0 = arena_.size(), entries0 = entries_.size();
  pending_.clear();
  bool fits = true;
  for (uint32_t i = b.first_record; i < b.first_record + b.record_count && fits; ++i) {
    const Record& r = set_.records[i];
    if (r.offset < first_offset_) continue;
    const RecordHeaders h = headers_of(set_, r);
    Pending p{i, -1, h.event_id};
    // The arena's growth, bounded before it happens: spans are 32-bit.
    const uint64_t grows = r.value.size() + h.batch_id.value.size() + h.source.value.size() + h.producer.value.size();
    if (used_ + arena_.size() - arena0 + grows > kMaxOutputBytes) {
      fits = false;
      break;
    }
    OrderLineage lineage;
    if (lineage_of(r, h, &lineage)) {
      const Span order{copy(r.value), static_cast<uint32_t>(r.value.size())};
      view_.data = arena_.data();
      view_.size = arena_.size();
      Error error;
      if (decode_order(order, options_.limits, &view_, &error) == Code::kOk) {
        p.order = static_cast<int32_t>(view_.orders.size() - 1);
        view_.lineage.push_back(lineage);
        order_record_.push_back(i);
      } else {
        arena_.truncate(order.offset);  // only the value: the lineage may be the cached copy
        quarantine(
            i, kUndecodable,
            at_offset(r.offset) + "the value is not an Order: " + error.message + " (" + code_name(error.code) + ")");
      }
    }
    pending_.push_back(p);
  }
  if (fits) {
    rejections_.clear();
    validate_orders(view_, options_.validation, orders0, &verdicts_, &rejections_);
    if (!rejections_.empty()) {
      const size_t mid = entries_.size();
      for (Rejection& x : rejections_) {
        const uint32_t record = order_record_[x.index];
        quarantine(record, reason_name(x.reason), at_offset(set_.records[record].offset) + x.message);
      }
      // Quarantine rows keep the log's order.
      std::inplace_merge(entries_.begin() + static_cast<std::ptrdiff_t>(entries0),
                         entries_.begin() + static_cast<std::ptrdiff_t>(mid), entries_.end(),
                         [](const Entry& a, const Entry& z) { return a.record < z.record; });
    }
    // The batch's output: each value once (the arena, and the strings decoded
    // from it), each kept order's lineage and ids on every row it has, each
    // quarantined record's row.
    uint64_t bytes = arena_.size() - arena0;
    for (size_t o = orders0; o < view_.orders.size(); ++o) {
      if (verdicts_[o] != Verdict::kAccept) continue;
      const OrderView& v = view_.orders[o];
      const OrderLineage& l = view_.lineage[o];
      const uint64_t rows = 1 + (v.items_end - v.items_begin) + (v.payments_end - v.payments_begin) + 1;
      bytes += rows * (uint64_t{l.batch_id.length} + l.source.length + l.producer.length + v.event_id.length +
                       v.order_id.length + v.customer_id.length + 2 * kMaxEnumNameBytes);
    }
    for (size_t e = entries0; e < entries_.size(); ++e) bytes += entry_bytes(entries_[e]);
    fits = used_ + bytes <= kMaxOutputBytes;
    if (fits) used_ += bytes;
  }
  if (!fits) {  // as if the batch had not been read
    view_.orders.resize(orders0);
    view_.items.resize(items0);
    view_.payments.resize(payments0);
    view_.lineage.resize(orders0);
    order_record_.resize(orders0);
    verdicts_.resize(orders0);
    arena_.truncate(arena0);
    entries_.resize(entries0);
    cached_ = false;
  }
  return fits;
}

Code OrderRecords::keep(const RecordBatchInfo& b, LogDedup* dedup, DecodedRecords* out, Error* error) {
  size_t e = entries_.size();
  while (e > 0 && entries_[e - 1].record >= b.first_record) --e;  // this batch's quarantine
  // Keys first, so the window's slots can be loaded a few records ahead.
  keys_.resize(pending_.size());
  for (size_t k = 0; k < pending_.size() && dedup != nullptr; ++k) {
    const Pending& p = pending_[k];
    if (!p.event_id.present) continue;
    const Record& r = set_.records[p.record];
    keys_[k] = order_key(reinterpret_cast<const uint8_t*>(p.event_id.value.data()), p.event_id.value.size(),
                         reinterpret_cast<const uint8_t*>(r.value.data()), r.value.size());
  }
  constexpr size_t kAhead = 8;
  for (size_t k = 0; k < pending_.size(); ++k) {
    const Pending& p = pending_[k];
    const Record& r = set_.records[p.record];
    bool duplicate = false;
    if (dedup != nullptr && p.event_id.present) {
      if (k + kAhead < pending_.size()) dedup->prefetch(keys_[k + kAhead]);
      KS_TRY(dedup->observe(r.offset, r.timestamp_ms, keys_[k], &duplicate, error));
    }
    if (duplicate) {
      ++out->duplicates;
      if (p.order >= 0) verdicts_[static_cast<size_t>(p.order)] = Verdict::kDuplicate;
    }
    while (e < entries_.size() && entries_[e].record < p.record) ++e;
    if (e < entries_.size() && entries_[e].record == p.record) entries_[e].dropped = duplicate;
    if (out->records == 0 || r.timestamp_ms > out->max_timestamp_ms) out->max_timestamp_ms = r.timestamp_ms;
    out->last_offset = r.offset;
    ++out->records;
  }
  return Code::kOk;
}

void OrderRecords::encode(DecodedRecords* out) {
  std::vector<uint32_t> rows;
  rows.reserve(view_.orders.size());
  for (uint32_t i = 0; i < view_.orders.size(); ++i) {
    if (verdicts_[i] == Verdict::kAccept) rows.push_back(i);
  }
  encode_bronze_tables(view_, rows, &out->tables);
  std::vector<QuarantineRow> quarantined;
  for (const Entry& e : entries_) {
    if (e.dropped) continue;
    const Record& r = set_.records[e.record];
    QuarantineRow q = quarantine_row(r, headers_of(set_, r));
    q.reason = e.reason;
    q.message = e.message;
    quarantined.push_back(q);
  }
  out->quarantine = encode_quarantine(quarantined);
  out->orders = rows.size();
  out->quarantined = quarantined.size();
}

// Moves the result past a batch that was read whole (up to the bound).
void commit(const RecordBatchInfo& b, size_t at, int64_t end_offset, DecodedRecords* out) {
  out->next_offset = std::max(out->next_offset, std::min(batch_end(b), end_offset));
  out->consumed = at + b.size;
}

int32_t parse_index(const HeaderView& h) {
  if (!h.present || h.value.empty() || h.value.size() > 10) return -1;
  int64_t v = 0;
  for (const char c : h.value) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v <= INT32_MAX ? static_cast<int32_t>(v) : -1;
}

}  // namespace

Code decode_order_records(const uint8_t* data, size_t n, int64_t first_offset, int64_t end_offset,
                          size_t max_batch_bytes, LogDedup* dedup, const ProcessOptions& options, DecodedRecords* out,
                          Error* error) {
  *out = DecodedRecords{};
  out->next_offset = first_offset;
  RecordSet set;
  KS_TRY(read_record_batches(data, n, max_batch_bytes, &set, error));
  KS_TRY(check_offsets(set, error));
  clip(&set, end_offset);
  KS_TRY(check_window(set, first_offset, dedup, error));
  OrderRecords records(set, first_offset, options);
  size_t at = 0;
  for (const RecordBatchInfo& b : set.batches) {
    if (!b.control) {
      if (!records.decode(b)) {
        if (out->consumed == 0) return too_large(error, at, b);
        break;  // the next call starts with this batch
      }
      KS_TRY(records.keep(b, dedup, out, error));
    }
    commit(b, at, end_offset, out);
    at += b.size;
  }
  records.encode(out);
  return Code::kOk;
}

Code decode_reject_records(const uint8_t* data, size_t n, int64_t first_offset, int64_t end_offset,
                           size_t max_batch_bytes, LogDedup* dedup, DecodedRecords* out, Error* error) {
  *out = DecodedRecords{};
  out->next_offset = first_offset;
  RecordSet set;
  KS_TRY(read_record_batches(data, n, max_batch_bytes, &set, error));
  KS_TRY(check_offsets(set, error));
  clip(&set, end_offset);
  KS_TRY(check_window(set, first_offset, dedup, error));
  std::vector<QuarantineRow> rows;
  rows.reserve(set.records.size());
  std::string key;  // batch_id '\0' error.index, reused
  uint64_t used = 0;
  size_t at = 0;
  for (const RecordBatchInfo& b : set.batches) {
    const uint32_t end = b.first_record + b.record_count;
    // Measured before the window decides, as for the orders topic.
    uint64_t bytes = 0;
    for (uint32_t i = b.first_record; i < end; ++i) {
      const Record& r = set.records[i];
      if (r.offset < first_offset) continue;
      const RecordHeaders h = headers_of(set, r);
      bytes += h.batch_id.value.size() + h.source.value.size() + h.producer.value.size() + h.event_id.value.size() +
               h.reason.value.size() + h.message.value.size() + r.value.size();
    }
    if (used + bytes > kMaxOutputBytes) {
      if (out->consumed == 0) return too_large(error, at, b);
      break;
    }
    used += bytes;
    for (uint32_t i = b.first_record; i < end; ++i) {
      const Record& r = set.records[i];
      if (r.offset < first_offset) continue;
      if (out->records == 0 || r.timestamp_ms > out->max_timestamp_ms) out->max_timestamp_ms = r.timestamp_ms;
      out->last_offset = r.offset;
      ++out->records;
      const RecordHeaders h = headers_of(set, r);
      if (dedup != nullptr && h.batch_id.present && h.index.present) {
        key.assign(h.batch_id.value);
        key.push_back('\0');
        key.append(h.index.value);
        bool duplicate = false;
        KS_TRY(dedup->observe(r.offset, r.timestamp_ms,
                              hash128(reinterpret_cast<const uint8_t*>(key.data()), key.size(), kRejectKeySeed),
                              &duplicate, error));
        if (duplicate) {
          ++out->duplicates;
          continue;
        }
      }
      QuarantineRow q = quarantine_row(r, h);
      q.index = parse_index(h.index);
      q.reason = utf8_or_empty(h.reason);
      q.message = utf8_or_empty(h.message);
      rows.push_back(q);
    }
    commit(b, at, end_offset, out);
    at += b.size;
  }
  out->quarantine = encode_quarantine(rows);
  out->quarantined = rows.size();
  BatchView empty;
  encode_bronze_tables(empty, {}, &out->tables);
  out->tables.orders = out->tables.order_items = out->tables.order_payments = out->tables.customers = nullptr;
  return Code::kOk;
}

}  // namespace keystone
