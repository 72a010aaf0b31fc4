// The index both dedup windows keep over their ring of keys (dedup.h: a
// batch's keys in arrival order; log_dedup.h: a partition's occurrences in
// offset order): open addressing with linear probing over a power-of-two
// table of slots, and backward-shift deletion, so lookups need no tombstones.
//
// A slot holds a ring position + 1 (0 marks it empty) and the low 32 bits of
// the key's first word, which give the home bucket and filter comparisons
// before the ring is read. The table is at least twice the ring's size, so a
// probe finds an empty slot within a few steps.
#pragma once

#include <cstdint>

namespace keystone {

struct KeySlot {
  uint32_t pos1;
  uint32_t tag;
};

// The slot of the key whose tag is `tag` and whose ring position satisfies
// `is_key(pos)`, or the empty slot where that key would go.
template <class IsKey>
inline uint64_t find_key_slot(const KeySlot* slots, uint64_t mask, uint32_t tag, IsKey is_key) {
  for (uint64_t i = tag & mask;; i = (i + 1) & mask) {
    const KeySlot& s = slots[i];
    if (s.pos1 == 0 || (s.tag == tag && is_key(s.pos1 - 1))) return i;
  }
}

// The first empty slot from `tag`'s home bucket on (a key known to be absent).
inline uint64_t empty_key_slot(const KeySlot* slots, uint64_t mask, uint32_t tag) {
  uint64_t i = tag & mask;
  while (slots[i].pos1 != 0) i = (i + 1) & mask;
  return i;
}

// Empties slot `hole`: later members of its probe run move up into it when
// that keeps them reachable from their home bucket.
inline void erase_key_slot(KeySlot* slots, uint64_t mask, uint64_t hole) {
  for (uint64_t j = (hole + 1) & mask;; j = (j + 1) & mask) {
    const KeySlot s = slots[j];
    if (s.pos1 == 0) break;
    const uint64_t home = s.tag & mask;
    if (((j - home) & mask) >= ((j - hole) & mask)) {
      slots[hole] = s;
      hole = j;
    }
  }
  slots[hole] = KeySlot{0, 0};
}

}  // namespace keystone
