#include "keystone/codec.h"

#include <isa-l/crc.h>
#include <lz4frame.h>
#include <snappy.h>
#include <zlib.h>
#include <zstd.h>

#include <climits>
#include <cstring>
#include <string>

namespace keystone {
namespace {

KS_COLD Code fail(Error* error, const std::string& message) {
  if (error != nullptr) {
    error->code = Code::kCodec;
    error->offset = -1;
    error->message = message;
  }
  return Code::kCodec;
}

// The xerial framing Kafka's Java client writes around snappy (snappy-java's
// SnappyOutputStream): an 8-byte magic, two big-endian int32 versions, then
// blocks of [big-endian int32 compressed length][raw snappy block].
constexpr uint8_t kXerialMagic[8] = {0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0};
constexpr size_t kXerialHeader = 16;
constexpr size_t kXerialBlock = size_t{32} * 1024;  // snappy-java's default block size

void put_be32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

uint32_t get_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

Code snappy_compress(const uint8_t* in, size_t n, Buffer* out) {
  uint8_t* header = out->extend(kXerialHeader);
  std::memcpy(header, kXerialMagic, sizeof(kXerialMagic));
  put_be32(header + 8, 1);   // version
  put_be32(header + 12, 1);  // minimum compatible version
  for (size_t at = 0; at < n; at += kXerialBlock) {
    size_t len = std::min(kXerialBlock, n - at);
    size_t before = out->size();
    out->extend(4 + snappy::MaxCompressedLength(len));
    size_t written = 0;
    snappy::RawCompress(reinterpret_cast<const char*>(in + at), len, reinterpret_cast<char*>(out->data() + before + 4),
                        &written);
    put_be32(out->data() + before, static_cast<uint32_t>(written));
    out->truncate(before + 4 + written);
  }
  return Code::kOk;
}

Code snappy_raw_decompress(const uint8_t* in, size_t n, size_t max_out, Buffer* out, Error* error) {
  size_t len = 0;
  if (!snappy::GetUncompressedLength(reinterpret_cast<const char*>(in), n, &len)) {
    return fail(error, "snappy: not a snappy block");
  }
  if (len > max_out - std::min(max_out, out->size())) {
    return fail(error, "snappy: decompresses to " + std::to_string(len) + " bytes, more than allowed");
  }
  uint8_t* dst = out->extend(len);
  if (!snappy::RawUncompress(reinterpret_cast<const char*>(in), n, reinterpret_cast<char*>(dst))) {
    return fail(error, "snappy: corrupt block");
  }
  return Code::kOk;
}

Code snappy_decompress(const uint8_t* in, size_t n, size_t max_out, Buffer* out, Error* error) {
  if (n < kXerialHeader || std::memcmp(in, kXerialMagic, sizeof(kXerialMagic)) != 0) {
    return snappy_raw_decompress(in, n, max_out, out, error);  // librdkafka writes raw snappy
  }
  for (size_t at = kXerialHeader; at < n;) {
    if (n - at < 4) return fail(error, "snappy: truncated xerial block length");
    size_t len = get_be32(in + at);
    at += 4;
    if (len > n - at) return fail(error, "snappy: xerial block past the end of the data");
    KS_TRY(snappy_raw_decompress(in + at, len, max_out, out, error));
    at += len;
  }
  return Code::kOk;
}

Code zstd_compress(int level, const uint8_t* in, size_t n, Buffer* out, Error* error) {
  size_t before = out->size();
  size_t bound = ZSTD_compressBound(n);
  out->extend(bound);
  size_t written = ZSTD_compress(out->data() + before, bound, in, n, level == 0 ? ZSTD_CLEVEL_DEFAULT : level);
  if (ZSTD_isError(written)) {
    out->truncate(before);
    return fail(error, std::string("zstd: ") + ZSTD_getErrorName(written));
  }
  out->truncate(before + written);
  return Code::kOk;
}

Code zstd_decompress(const uint8_t* in, size_t n, size_t max_out, Buffer* out, Error* error) {
  // Streaming: the frames Kafka's clients write need not declare their size.
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  if (ctx == nullptr) return fail(error, "zstd: out of memory");
  ZSTD_inBuffer src{in, n, 0};
  Code code = Code::kOk;
  size_t last = 1;
  while (src.pos < src.size || last != 0) {
    size_t room = std::min<size_t>(ZSTD_DStreamOutSize(), max_out - std::min(max_out, out->size()));
    if (room == 0) {
      code = fail(error, "zstd: decompresses to more bytes than allowed");
      break;
    }
    size_t before = out->size();
    ZSTD_outBuffer dst{out->extend(room), room, 0};
    last = ZSTD_decompressStream(ctx, &dst, &src);
    out->truncate(before + dst.pos);
    if (ZSTD_isError(last)) {
      code = fail(error, std::string("zstd: ") + ZSTD_getErrorName(last));
      break;
    }
    if (src.pos == src.size && dst.pos == 0 && last != 0) {
      code = fail(error, "zstd: truncated frame");
      break;
    }
  }
  ZSTD_freeDCtx(ctx);
  return code;
}

Code lz4_compress(int level, const uint8_t* in, size_t n, Buffer* out, Error* error) {
  // What Kafka's Java client writes (KafkaLZ4BlockOutputStream): 64 KiB
  // independent blocks, no block or content checksum, no content size; its
  // reader refuses dependent blocks.
  LZ4F_preferences_t prefs;
  std::memset(&prefs, 0, sizeof(prefs));
  prefs.frameInfo.blockSizeID = LZ4F_max64KB;
  prefs.frameInfo.blockMode = LZ4F_blockIndependent;
  prefs.compressionLevel = level;
  size_t before = out->size();
  size_t bound = LZ4F_compressFrameBound(n, &prefs);
  out->extend(bound);
  size_t written = LZ4F_compressFrame(out->data() + before, bound, in, n, &prefs);
  if (LZ4F_isError(written)) {
    out->truncate(before);
    return fail(error, std::string("lz4: ") + LZ4F_getErrorName(written));
  }
  out->truncate(before + written);
  return Code::kOk;
}

Code lz4_decompress(const uint8_t* in, size_t n, size_t max_out, Buffer* out, Error* error) {
  LZ4F_dctx* ctx = nullptr;
  if (LZ4F_isError(LZ4F_createDecompressionContext(&ctx, LZ4F_VERSION))) return fail(error, "lz4: out of memory");
  Code code = Code::kOk;
  size_t at = 0;
  size_t hint = 1;
  while (hint != 0) {
    size_t room = std::min<size_t>(size_t{64} * 1024, max_out - std::min(max_out, out->size()));
    if (room == 0) {
      code = fail(error, "lz4: decompresses to more bytes than allowed");
      break;
    }
    size_t before = out->size();
    size_t produced = room;
    size_t consumed = n - at;
    hint = LZ4F_decompress(ctx, out->extend(room), &produced, in + at, &consumed, nullptr);
    out->truncate(before + produced);
    at += consumed;
    if (LZ4F_isError(hint)) {
      code = fail(error, std::string("lz4: ") + LZ4F_getErrorName(hint));
      break;
    }
    if (hint != 0 && at == n && produced == 0) {
      code = fail(error, "lz4: truncated frame");
      break;
    }
  }
  LZ4F_freeDecompressionContext(ctx);
  return code;
}

Code gzip_compress(int level, const uint8_t* in, size_t n, Buffer* out, Error* error) {
  z_stream z;
  std::memset(&z, 0, sizeof(z));
  // 15 + 16: a gzip wrapper (RFC 1952) around deflate, as Kafka's GZIPOutputStream writes.
  if (deflateInit2(&z, level == 0 ? Z_DEFAULT_COMPRESSION : level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    return fail(error, "gzip: bad level " + std::to_string(level));
  }
  size_t before = out->size();
  size_t bound = deflateBound(&z, n);
  out->extend(bound);
  z.next_in = const_cast<Bytef*>(in);
  z.avail_in = static_cast<uInt>(n);
  z.next_out = out->data() + before;
  z.avail_out = static_cast<uInt>(bound);
  int rc = deflate(&z, Z_FINISH);
  size_t written = bound - z.avail_out;
  deflateEnd(&z);
  if (rc != Z_STREAM_END) {
    out->truncate(before);
    return fail(error, "gzip: deflate did not finish");
  }
  out->truncate(before + written);
  return Code::kOk;
}

Code gzip_decompress(const uint8_t* in, size_t n, size_t max_out, Buffer* out, Error* error) {
  z_stream z;
  std::memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, 15 + 16) != Z_OK) return fail(error, "gzip: out of memory");
  z.next_in = const_cast<Bytef*>(in);
  z.avail_in = static_cast<uInt>(n);
  Code code = Code::kOk;
  for (;;) {
    size_t room = std::min<size_t>(size_t{64} * 1024, max_out - std::min(max_out, out->size()));
    if (room == 0) {
      code = fail(error, "gzip: decompresses to more bytes than allowed");
      break;
    }
    size_t before = out->size();
    z.next_out = out->extend(room);
    z.avail_out = static_cast<uInt>(room);
    int rc = inflate(&z, Z_NO_FLUSH);
    out->truncate(before + room - z.avail_out);
    if (rc == Z_STREAM_END) break;
    if (rc != Z_OK) {
      code = fail(error, std::string("gzip: ") + (z.msg != nullptr ? z.msg : "corrupt data"));
      break;
    }
    if (z.avail_in == 0 && z.avail_out != 0) {
      code = fail(error, "gzip: truncated stream");
      break;
    }
  }
  inflateEnd(&z);
  return code;
}

}  // namespace

const char* codec_name(Codec codec) {
  switch (codec) {
    case Codec::kNone: return "none";
    case Codec::kGzip: return "gzip";
    case Codec::kSnappy: return "snappy";
    case Codec::kLz4: return "lz4";
    case Codec::kZstd: return "zstd";
  }
  return "unknown";
}

bool codec_from_name(std::string_view name, Codec* codec) {
  for (Codec c : {Codec::kNone, Codec::kGzip, Codec::kSnappy, Codec::kLz4, Codec::kZstd}) {
    if (name == codec_name(c)) {
      *codec = c;
      return true;
    }
  }
  return false;
}

Code compress(Codec codec, int level, const uint8_t* in, size_t n, Buffer* out, Error* error) {
  switch (codec) {
    case Codec::kNone:
      if (n != 0) std::memcpy(out->extend(n), in, n);
      return Code::kOk;
    case Codec::kGzip: return gzip_compress(level, in, n, out, error);
    case Codec::kSnappy: return snappy_compress(in, n, out);
    case Codec::kLz4: return lz4_compress(level, in, n, out, error);
    case Codec::kZstd: return zstd_compress(level, in, n, out, error);
  }
  return fail(error, "unknown codec " + std::to_string(static_cast<int>(codec)));
}

Code decompress(Codec codec, const uint8_t* in, size_t n, size_t max_out, Buffer* out, Error* error) {
  switch (codec) {
    case Codec::kNone:
      if (n > max_out - std::min(max_out, out->size())) return fail(error, "more bytes than allowed");
      if (n != 0) std::memcpy(out->extend(n), in, n);
      return Code::kOk;
    case Codec::kGzip: return gzip_decompress(in, n, max_out, out, error);
    case Codec::kSnappy: return snappy_decompress(in, n, max_out, out, error);
    case Codec::kLz4: return lz4_decompress(in, n, max_out, out, error);
    case Codec::kZstd: return zstd_decompress(in, n, max_out, out, error);
  }
  return fail(error, "unknown codec " + std::to_string(static_cast<int>(codec)));
}

uint32_t crc32c(const uint8_t* data, size_t n) {
  // ISA-L's crc32_iscsi is CRC32C without the customary inversions around
  // it; its length is an int, so long inputs go in slices.
  uint32_t crc = 0xFFFFFFFFu;
  while (n > 0) {
    int len = static_cast<int>(std::min<size_t>(n, INT_MAX));
    crc = crc32_iscsi(const_cast<uint8_t*>(data), len, crc);
    data += len;
    n -= static_cast<size_t>(len);
  }
  return ~crc;
}

}  // namespace keystone
