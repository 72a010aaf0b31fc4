// Stage 3, dedup: a bounded window of 128-bit keys in arrival order. A key is
// an order's event_id hashed, or, where event_id is empty, the hash of the
// Order's bytes. The window forgets its oldest key when it is full and any
// key older than max_age_ms, so memory is fixed by configuration, not load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "keystone/decode.h"
#include "keystone/key_index.h"
#include "keystone/validate.h"

namespace keystone {

struct Key128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const Key128& o) const { return lo == o.lo && hi == o.hi; }
};

// Seeded 128-bit hash for dedup keys. Not cryptographic: a sender able to
// forge collisions could only make its own orders look like duplicates.
Key128 hash128(const uint8_t* data, size_t size, uint64_t seed);

// The key of one order: its event_id, or its bytes when event_id is empty.
// The two use different seeds so an event_id can never equal a bytes key.
Key128 order_key(const BatchView& batch, const OrderView& order);
// The same key from the bytes themselves: an Order read back from Kafka,
// with the event_id its record carries.
Key128 order_key(const uint8_t* event_id, size_t event_id_size, const uint8_t* order, size_t order_size);

struct KeyHash {
  size_t operator()(const Key128& k) const { return static_cast<size_t>(k.lo); }
};

struct DedupOptions {
  uint32_t max_keys = 1000000;
  int64_t max_age_ms = int64_t{3600} * 1000;
};

class DedupWindow {
 public:
  explicit DedupWindow(const DedupOptions& options);
  ~DedupWindow();
  DedupWindow(const DedupWindow&) = delete;
  DedupWindow& operator=(const DedupWindow&) = delete;

  // For each i with verdicts[i] == kAccept: a key already in the window (or
  // earlier in this call) turns it into kDuplicate; a new key is inserted at
  // now_ms and appended to *inserted. Expired keys leave first.
  void apply(const Key128* keys, Verdict* verdicts, size_t n, int64_t now_ms, std::vector<Key128>* inserted);

  // Removes these keys where still present; returns how many were removed.
  size_t forget(const Key128* keys, size_t n);

  size_t size() const;
  // Bytes reserved for the window at full capacity (ring and index).
  size_t memory_bytes() const;
  uint32_t max_keys() const { return options_.max_keys; }

 private:
  struct Entry {
    Key128 key;
    int64_t inserted_ms;  // kForgotten once forget() has removed the key
  };
  using Slot = KeySlot;  // key_index.h
  static constexpr int64_t kForgotten = INT64_MIN;

  bool contains_locked(const Key128& key) const;
  void insert_locked(const Key128& key, int64_t now_ms);
  void evict_oldest_locked();
  void compact_locked();
  uint64_t find_slot_locked(const Key128& key, uint32_t pos) const;

  const DedupOptions options_;
  mutable std::mutex mu_;
  // The ring holds used_ entries from position head_ (the oldest) on,
  // wrapping at max_keys: live keys and the markers of forgotten ones.
  // Positions wrap by comparison, not %, keeping a 64-bit division off
  // every insert and eviction.
  uint32_t next(uint32_t pos) const { return pos + 1 == options_.max_keys ? 0 : pos + 1; }
  uint32_t at(uint32_t i) const {  // position of the i-th entry from the head, i < max_keys
    const uint64_t p = static_cast<uint64_t>(head_) + i;
    return static_cast<uint32_t>(p >= options_.max_keys ? p - options_.max_keys : p);
  }
  Entry* ring_ = nullptr;  // max_keys entries, mapped and released by this class
  Slot* slots_ = nullptr;  // slot_mask_ + 1 slots, likewise
  uint64_t slot_mask_ = 0;
  uint32_t head_ = 0;
  uint32_t used_ = 0;
  size_t live_ = 0;
};

// The dedup stage: keys for the accepted orders of a batch (hashed outside
// the window's lock), then DedupWindow::apply.
void dedup_orders(const BatchView& batch, DedupWindow* window, int64_t now_ms, std::vector<Verdict>* verdicts,
                  std::vector<Key128>* inserted);

}  // namespace keystone
