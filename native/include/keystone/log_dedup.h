// Dedup over a Kafka partition's log: a window defined by offsets and the
// records' own timestamps, not by arrival or the wall clock, so reading the
// same offsets again (another fetch split, a restart, a slower consumer)
// makes the same decisions.
//
// A record at offset o with key k is a duplicate iff the previous record with
// key k this window observed is at offset o' with
//     o - window_records <= o' < o   and   timestamp(o) - timestamp(o') <= window_ms.
// Every record observed becomes k's latest occurrence, duplicate or not.
//
// Memory is bounded by window_records: a FIFO of the occurrences still inside
// the offset window, in offset order, and an index from each key to its latest
// occurrence. An occurrence leaves the FIFO once no later offset can reach it,
// and takes its index entry along only if that still points at it. One
// consumer thread per window (per partition): there is no locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "keystone/dedup.h"
#include "keystone/key_index.h"
#include "keystone/status.h"

namespace keystone {

class LogDedup {
 public:
  static constexpr int64_t kMaxWindowRecords = int64_t{1} << 30;

  // window_records in [0, kMaxWindowRecords] (0 dedups nothing), window_ms
  // >= 0; values outside are clamped into range.
  LogDedup(int64_t window_records, int64_t window_ms);

  // Whether `key` at `offset` (timestamp_ms, the record's) repeats an earlier
  // occurrence inside the window (*duplicate), then records this occurrence.
  // Offsets must be >= 0 and increase from call to call: any other is
  // refused (kOffsetOutOfOrder) and changes nothing.
  Code observe(int64_t offset, int64_t timestamp_ms, const Key128& key, bool* duplicate, Error* error);

  // A hint that `key` will be observed soon: starts loading its index slot.
  void prefetch(const Key128& key) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[static_cast<uint32_t>(key.lo) & slot_mask_]);
  }

  // Forgets everything, last_offset() included.
  void reset();

  // Occurrences held: at most window_records.
  size_t size() const { return count_; }
  // The offset last observed, or -1 before the first.
  int64_t last_offset() const { return last_offset_; }
  int64_t window_records() const { return window_records_; }
  int64_t window_ms() const { return window_ms_; }

 private:
  struct Occurrence {
    Key128 key;
    int64_t offset;
    int64_t timestamp_ms;
  };
  using Slot = KeySlot;  // key_index.h

  uint32_t position(size_t i) const {  // ring position of the i-th occurrence from the oldest
    const size_t p = head_ + i;
    return static_cast<uint32_t>(p >= ring_.size() ? p - ring_.size() : p);
  }
  uint64_t find(const Key128& key) const;  // its slot, or an empty one where it would go
  void grow();
  void pop_oldest();

  int64_t window_records_;
  int64_t window_ms_;
  int64_t last_offset_ = -1;
  std::vector<Occurrence> ring_;  // the FIFO: count_ occurrences from head_ on, wrapping
  size_t head_ = 0;
  size_t count_ = 0;
  std::vector<Slot> slots_;  // at least twice the ring's size, a power of two
  uint64_t slot_mask_ = 0;
};

}  // namespace keystone
