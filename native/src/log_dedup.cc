#include "keystone/log_dedup.h"

#include <algorithm>
#include <string>

namespace keystone {
namespace {

uint64_t round_up_pow2(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Offsets only increase and are >= 0, so later - earlier never wraps.
inline uint64_t distance(int64_t later, int64_t earlier) {
  return static_cast<uint64_t>(later) - static_cast<uint64_t>(earlier);
}

}  // namespace

LogDedup::LogDedup(int64_t window_records, int64_t window_ms)
    : window_records_(std::clamp<int64_t>(window_records, 0, kMaxWindowRecords)),
      window_ms_(std::max<int64_t>(window_ms, 0)) {}

uint64_t LogDedup::find(const Key128& key) const {
  return find_key_slot(slots_.data(), slot_mask_, static_cast<uint32_t>(key.lo),
                       [&](uint32_t pos) { return ring_[pos].key == key; });
}

// The FIFO doubles up to window_records + 1 (an occurrence is pushed before
// the oldest leaves); the index is rebuilt for the new positions, oldest
// first so each key ends up pointing at its latest occurrence.
void LogDedup::grow() {
  const size_t cap = std::min<size_t>(std::max<size_t>(ring_.size() * 2, 16), static_cast<size_t>(window_records_) + 1);
  std::vector<Occurrence> ring(cap);
  for (size_t i = 0; i < count_; ++i) ring[i] = ring_[position(i)];
  ring_.swap(ring);
  head_ = 0;
  const uint64_t nslots = round_up_pow2(static_cast<uint64_t>(cap) * 2);  // at most half full
  slots_.assign(nslots, Slot{0, 0});
  slot_mask_ = nslots - 1;
  for (size_t i = 0; i < count_; ++i) {
    slots_[find(ring_[i].key)] = Slot{static_cast<uint32_t>(i + 1), static_cast<uint32_t>(ring_[i].key.lo)};
  }
}

void LogDedup::pop_oldest() {
  const uint64_t slot = find(ring_[head_].key);  // every key held has a slot, at its latest occurrence
  if (slots_[slot].pos1 == head_ + 1) erase_key_slot(slots_.data(), slot_mask_, slot);
  head_ = head_ + 1 == ring_.size() ? 0 : head_ + 1;
  --count_;
}

Code LogDedup::observe(int64_t offset, int64_t timestamp_ms, const Key128& key, bool* duplicate, Error* error) {
  if (KS_UNLIKELY(offset < 0 || offset <= last_offset_)) {
    if (error != nullptr) {
      error->code = Code::kOffsetOutOfOrder;
      error->offset = -1;
      error->message = offset < 0
                           ? "offset " + std::to_string(offset) + " is negative"
                           : "offset " + std::to_string(offset) + " is not after " + std::to_string(last_offset_) +
                                 ", the last one the dedup window observed; reset() it to read again";
    }
    return Code::kOffsetOutOfOrder;
  }
  if (count_ == ring_.size()) grow();
  const uint64_t slot = find(key);
  bool repeat = false;
  if (slots_[slot].pos1 != 0) {
    const Occurrence& prev = ring_[slots_[slot].pos1 - 1];
    // 128-bit: hostile timestamps may be anywhere in int64.
    repeat = distance(offset, prev.offset) <= static_cast<uint64_t>(window_records_) &&
             static_cast<__int128_t>(timestamp_ms) - prev.timestamp_ms <= window_ms_;
  }
  const uint32_t pos = position(count_);
  ring_[pos] = Occurrence{key, offset, timestamp_ms};
  ++count_;
  slots_[slot] = Slot{pos + 1, static_cast<uint32_t>(key.lo)};
  last_offset_ = offset;
  // PERF NOTE: in a full window every observe touches two random slots, the
  // new key's and the leaving occurrence's (a window of 1,000,000 records
  // takes about 48 MB). Loading the leaving one's slot a few observes early,
  // and the caller's prefetch() of the new key's, took stage_bench's dedup
  // share from about 255 to 95 ns per record; huge pages then made no
  // difference.
  constexpr size_t kEvictAhead = 8;
  if (count_ > kEvictAhead) {
    __builtin_prefetch(&slots_[static_cast<uint32_t>(ring_[position(kEvictAhead)].key.lo) & slot_mask_]);
  }
  // Keep only what a later offset can reach: o' > offset - window_records.
  while (count_ > 0 && distance(offset, ring_[head_].offset) >= static_cast<uint64_t>(window_records_)) {
    pop_oldest();
  }
  *duplicate = repeat;
  return Code::kOk;
}

void LogDedup::reset() {
  std::vector<Occurrence>().swap(ring_);
  std::vector<Slot>().swap(slots_);
  slot_mask_ = 0;
  head_ = count_ = 0;
  last_offset_ = -1;
}

}  // namespace keystone
