// Kafka's default partitioner hash: murmur2 exactly as the Java client's
// Utils.murmur2 computes it, made positive with its toPositive (& 0x7fffffff).
// The core computes it per accepted order_id so the server can choose each
// record's partition (key_hash % partitions) without a Python loop, and land
// every order_id on the partition a Java producer would have chosen.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace keystone {

inline int32_t kafka_key_hash(const uint8_t* data, size_t length) {
  constexpr uint32_t kSeed = 0x9747b28c;
  constexpr uint32_t kM = 0x5bd1e995;
  constexpr int kR = 24;
  // Java's int arithmetic wraps; uint32_t gives the same bits without UB.
  uint32_t h = kSeed ^ static_cast<uint32_t>(length);
  const size_t blocks = length / 4;
  for (size_t i = 0; i < blocks; ++i) {
    uint32_t k;
    std::memcpy(&k, data + i * 4, 4);  // little-endian, as Java assembles it
    k *= kM;
    k ^= k >> kR;
    k *= kM;
    h *= kM;
    h ^= k;
  }
  const uint8_t* tail = data + blocks * 4;
  switch (length & 3) {
    case 3: h ^= static_cast<uint32_t>(tail[2]) << 16; [[fallthrough]];
    case 2: h ^= static_cast<uint32_t>(tail[1]) << 8; [[fallthrough]];
    case 1: h ^= tail[0]; h *= kM;
  }
  h ^= h >> 13;
  h *= kM;
  h ^= h >> 15;
  return static_cast<int32_t>(h & 0x7fffffff);
}

}  // namespace keystone
