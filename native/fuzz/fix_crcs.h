// Shared by the fuzz targets that read Kafka record batches: recomputes the
// CRC32C of every batch-shaped frame in place. Without it almost every
// mutation would stop at the CRC check, and the decompression and record
// parsing behind it would never be reached.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "keystone/codec.h"
#include "keystone/records.h"

namespace keystone::fuzz {

inline void fix_crcs(std::vector<uint8_t>* bytes) {
  size_t at = 0;
  while (bytes->size() - at >= kRecordBatchHeaderBytes) {
    uint8_t* h = bytes->data() + at;
    const int32_t length =
        static_cast<int32_t>((uint32_t{h[8]} << 24) | (uint32_t{h[9]} << 16) | (uint32_t{h[10]} << 8) | h[11]);
    if (length < static_cast<int32_t>(kRecordBatchHeaderBytes - 12) ||
        static_cast<size_t>(length) + 12 > bytes->size() - at) {
      return;
    }
    const uint32_t crc = crc32c(h + 21, static_cast<size_t>(length) + 12 - 21);
    h[17] = static_cast<uint8_t>(crc >> 24);
    h[18] = static_cast<uint8_t>(crc >> 16);
    h[19] = static_cast<uint8_t>(crc >> 8);
    h[20] = static_cast<uint8_t>(crc);
    at += static_cast<size_t>(length) + 12;
  }
}

}  // namespace keystone::fuzz
