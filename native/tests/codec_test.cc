#include "keystone/codec.h"

#include <string>

#include "check.h"

using namespace keystone;

namespace {

std::string text(size_t n) {
  std::string s;
  for (size_t i = 0; s.size() < n; ++i) s += "order-" + std::to_string(i % 977) + ",delivered,sao paulo;";
  s.resize(n);
  return s;
}

const uint8_t* u8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

std::string str(const Buffer& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

constexpr Codec kAll[] = {Codec::kNone, Codec::kGzip, Codec::kSnappy, Codec::kLz4, Codec::kZstd};

}  // namespace

TEST(crc32c_matches_the_castagnoli_check_value) {
  // The standard check value: CRC-32C of "123456789" is 0xE3069283.
  const std::string check = "123456789";
  CHECK_EQ(crc32c(u8(check), check.size()), 0xE3069283u);
  CHECK_EQ(crc32c(nullptr, 0), 0u);
  // 32 bytes of zeros, from RFC 3720's test vectors.
  const std::string zeros(32, '\0');
  CHECK_EQ(crc32c(u8(zeros), zeros.size()), 0x8A9136AAu);
}

TEST(every_codec_round_trips_empty_small_and_multi_block_input) {
  for (Codec codec : kAll) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{300000}}) {
      const std::string in = text(n);
      Buffer packed, plain;
      Error error;
      CHECK_EQ(compress(codec, 0, u8(in), in.size(), &packed, &error), Code::kOk);
      CHECK_EQ(decompress(codec, packed.data(), packed.size(), 1 << 30, &plain, &error), Code::kOk);
      CHECK(str(plain) == in);
      if (n == 300000 && codec != Codec::kNone) CHECK(packed.size() < in.size() / 4);
    }
  }
}

TEST(names_map_to_kafkas_attribute_values) {
  Codec c = Codec::kNone;
  CHECK(codec_from_name("zstd", &c));
  CHECK_EQ(static_cast<int>(c), 4);
  CHECK(codec_from_name("lz4", &c));
  CHECK_EQ(static_cast<int>(c), 3);
  CHECK(codec_from_name("snappy", &c));
  CHECK_EQ(static_cast<int>(c), 2);
  CHECK(codec_from_name("gzip", &c));
  CHECK_EQ(static_cast<int>(c), 1);
  CHECK(!codec_from_name("brotli", &c));
}

TEST(snappy_is_xerial_framed_like_kafkas_java_client_and_raw_snappy_is_read_too) {
  const std::string in = text(100000);
  Buffer packed;
  Error error;
  CHECK_EQ(compress(Codec::kSnappy, 0, u8(in), in.size(), &packed, &error), Code::kOk);
  const std::string head = str(packed).substr(0, 16);
  CHECK(head == std::string("\x82SNAPPY\0\0\0\0\x01\0\0\0\x01", 16));
  // 100,000 bytes in 32 KiB blocks: four blocks, each with its length first.
  size_t at = 16, blocks = 0;
  while (at < packed.size()) {
    const uint8_t* p = packed.data() + at;
    at += 4 + ((size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8) | p[3]);
    ++blocks;
  }
  CHECK_EQ(blocks, 4u);
  CHECK_EQ(at, packed.size());
  // A raw block (what librdkafka writes) decodes as well: the first block's.
  const uint8_t* first = packed.data() + 16;
  const size_t first_len = (size_t{first[0]} << 24) | (size_t{first[1]} << 16) | (size_t{first[2]} << 8) | first[3];
  Buffer plain;
  CHECK_EQ(decompress(Codec::kSnappy, first + 4, first_len, 1 << 20, &plain, &error), Code::kOk);
  CHECK(str(plain) == in.substr(0, size_t{32} * 1024));
}

TEST(lz4_frames_use_independent_blocks_as_kafkas_reader_requires) {
  const std::string in = text(200000);
  Buffer packed;
  Error error;
  CHECK_EQ(compress(Codec::kLz4, 0, u8(in), in.size(), &packed, &error), Code::kOk);
  // Frame magic, then FLG: version 01, block independence set, no block or content checksum, no size.
  CHECK_EQ(str(packed).substr(0, 4), std::string("\x04\x22\x4d\x18", 4));
  CHECK_EQ(static_cast<int>(packed.data()[4]), 0x60);
  CHECK_EQ(static_cast<int>(packed.data()[5] >> 4), 4);  // 64 KiB blocks
}

TEST(decompression_refuses_more_than_allowed_and_corrupt_input) {
  const std::string in = text(100000);
  for (Codec codec : kAll) {
    Buffer packed, plain;
    Error error;
    CHECK_EQ(compress(codec, 0, u8(in), in.size(), &packed, &error), Code::kOk);
    CHECK_EQ(decompress(codec, packed.data(), packed.size(), 50000, &plain, &error), Code::kCodec);
    CHECK(error.message.find("more") != std::string::npos);
    if (codec == Codec::kNone) continue;
    Buffer cut;
    Error cut_error;
    CHECK_EQ(decompress(codec, packed.data(), packed.size() / 2, 1 << 20, &cut, &cut_error), Code::kCodec);
    CHECK_EQ(std::string(code_name(cut_error.code)), "codec");
  }
  const std::string garbage = "this is not compressed by anything at all";
  for (Codec codec : {Codec::kGzip, Codec::kLz4, Codec::kZstd, Codec::kSnappy}) {
    Buffer plain;
    Error error;
    CHECK_EQ(decompress(codec, u8(garbage), garbage.size(), 1 << 20, &plain, &error), Code::kCodec);
  }
}
