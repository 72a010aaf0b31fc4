// Kafka's compression codecs and CRC32C, over the real libraries: zstd,
// liblz4 (frame format), snappy, zlib (gzip) and ISA-L (crc32_iscsi). Only
// the framing Kafka adds around a codec lives here: the xerial header and
// blocks that Kafka's Java client writes around snappy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "keystone/arrow.h"  // Buffer
#include "keystone/status.h"

namespace keystone {

// The values are Kafka's: bits 0-2 of a v2 record batch's attributes.
enum class Codec : uint8_t { kNone = 0, kGzip = 1, kSnappy = 2, kLz4 = 3, kZstd = 4 };

const char* codec_name(Codec codec);
// "none", "gzip", "snappy", "lz4", "zstd"; false for anything else.
bool codec_from_name(std::string_view name, Codec* codec);

// Appends the compressed form of in[0, n) to `out`, framed as Kafka's
// consumers read it: gzip (RFC 1952), xerial-framed snappy, an LZ4 frame with
// independent blocks, a zstd frame. `level` 0 means the codec's default.
// Fails only on a library error (kCodec) or a level out of the codec's range.
Code compress(Codec codec, int level, const uint8_t* in, size_t n, Buffer* out, Error* error);

// Appends the decompressed form of in[0, n) to `out`; raw and xerial-framed
// snappy are both read. Refuses (kCodec) corrupt input and output that would
// pass `max_out` bytes, so hostile input cannot ask for unbounded memory.
Code decompress(Codec codec, const uint8_t* in, size_t n, size_t max_out, Buffer* out, Error* error);

// CRC32C (Castagnoli), the checksum of Kafka's v2 record batches.
uint32_t crc32c(const uint8_t* data, size_t n);

}  // namespace keystone
