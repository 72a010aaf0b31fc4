// Protobuf wire-format reader: varints, tags, fixed-width values and
// length-delimited spans over a byte range. It never allocates, never reads
// outside [begin, end), and reports failures as a Code plus the position and
// a short description, left for the decoder to turn into an Error with a path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "keystone/status.h"

namespace keystone {

// A byte range of the input batch. Offsets are 32-bit: the pipeline refuses
// inputs of 2 GiB or more before decoding starts.
struct Span {
  uint32_t offset = 0;
  uint32_t length = 0;
};

namespace wire {

enum WireType : uint32_t {
  kVarint = 0,
  kI64 = 1,
  kLen = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kI32 = 5,
};

// Unknown groups may nest; deeper than this is refused rather than followed.
constexpr int kMaxGroupDepth = 32;

// Checks [data + from, data + size) once a byte >= 0x80 has been seen.
bool valid_utf8_from(const uint8_t* data, size_t size, size_t from);

// True when [data, data + size) is well-formed UTF-8 (no overlong forms, no
// surrogates, nothing above U+10FFFF).
// PERF NOTE: identifiers and most text are ASCII, so the inline part only
// tests eight bytes at a time for a high bit (the last word may overlap the
// one before); any non-ASCII byte hands over to the full check.
inline bool valid_utf8(const uint8_t* data, size_t size) {
  constexpr uint64_t kHighBits = 0x8080808080808080ull;
  uint64_t word;
  if (size >= 8) {
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
      std::memcpy(&word, data + i, 8);
      if (word & kHighBits) return valid_utf8_from(data, size, i);
    }
    std::memcpy(&word, data + size - 8, 8);
    return (word & kHighBits) == 0 || valid_utf8_from(data, size, i);
  }
  for (size_t i = 0; i < size; ++i) {
    if (data[i] & 0x80) return valid_utf8_from(data, size, i);
  }
  return true;
}

class Reader {
 public:
  // Reads [begin, end) of the buffer [base, limit); offsets are from base.
  Reader(const uint8_t* base, const uint8_t* begin, const uint8_t* end, const uint8_t* limit)
      : base_(base), limit_(limit), p_(begin), end_(end) {}
  // A reader over a whole buffer.
  Reader(const uint8_t* data, size_t size) : Reader(data, data, data + size, data + size) {}

  bool at_end() const { return p_ >= end_; }
  uint32_t offset() const { return static_cast<uint32_t>(p_ - base_); }
  const uint8_t* base() const { return base_; }
  // Offset of the last tag read, for errors about the field it introduced.
  uint32_t tag_offset() const { return static_cast<uint32_t>(last_tag_ - base_); }

  // The failure of the last call that did not return kOk.
  uint32_t fail_offset() const { return fail_offset_; }
  const char* fail_what() const { return fail_what_; }

  Code varint(uint64_t* out) {
    // PERF NOTE: most varints in an order batch (tags, enums, short
    // lengths) are one byte. Longer ones (timestamps, cents, message
    // lengths) are decoded inline when ten bytes remain in the whole
    // buffer, which holds even at the end of a small nested message (a
    // Timestamp); the varint must still end inside its own message.
    if (KS_LIKELY(p_ < end_ && *p_ < 0x80)) {
      *out = *p_++;
      return Code::kOk;
    }
    if (KS_LIKELY(limit_ - p_ >= 10)) {
      uint64_t r = *p_ & 0x7f;
      for (int i = 1; i < 10; ++i) {
        const uint8_t b = p_[i];
        r |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
        if (b < 0x80) {
          if (KS_UNLIKELY(i + 1 > end_ - p_)) break;  // ran past its message: let the slow path say so
          p_ += i + 1;
          *out = r;
          return Code::kOk;
        }
      }
    }
    return varint_slow(out);
  }

  // Reads a tag; field numbers are in 1 .. 2^29-1 and wire types in 0..5.
  Code tag(uint32_t* field, uint32_t* wire_type) {
    const uint8_t* start = p_;
    uint64_t t;
    KS_TRY(varint(&t));
    if (KS_UNLIKELY(t > UINT32_MAX || (t >> 3) == 0)) {
      return fail(Code::kInvalidFieldNumber, start, "invalid field number");
    }
    *field = static_cast<uint32_t>(t >> 3);
    *wire_type = static_cast<uint32_t>(t & 7);
    if (KS_UNLIKELY(*wire_type > kI32)) {
      return fail(Code::kBadWireType, start, "invalid wire type");
    }
    last_tag_ = start;
    return Code::kOk;
  }

  Code fixed32(uint32_t* out) {
    if (KS_UNLIKELY(end_ - p_ < 4)) return fail(Code::kTruncated, p_, "truncated fixed32");
    std::memcpy(out, p_, 4);
    p_ += 4;
    return Code::kOk;
  }

  Code fixed64(uint64_t* out) {
    if (KS_UNLIKELY(end_ - p_ < 8)) return fail(Code::kTruncated, p_, "truncated fixed64");
    std::memcpy(out, p_, 8);
    p_ += 8;
    return Code::kOk;
  }

  // Reads a length prefix and the span it covers, and steps over it.
  Code len(Span* out) {
    const uint8_t* start = p_;
    uint64_t n;
    KS_TRY(varint(&n));
    if (KS_UNLIKELY(n > static_cast<uint64_t>(end_ - p_))) {
      return fail(Code::kLengthPastEnd, start, "length runs past the end");
    }
    out->offset = static_cast<uint32_t>(p_ - base_);
    out->length = static_cast<uint32_t>(n);
    p_ += n;
    return Code::kOk;
  }

  // Reads a length prefix and narrows the reader to the message it covers,
  // returning its span and the end to restore with leave() once the message
  // is read. One reader serves every depth, so nested messages cost no copy.
  Code enter(Span* message, const uint8_t** saved_end) {
    KS_TRY(len(message));
    *saved_end = end_;
    end_ = p_;
    p_ = base_ + message->offset;
    return Code::kOk;
  }
  void leave(const uint8_t* saved_end) { end_ = saved_end; }

  // Steps over the value of an unknown field whose tag was just read.
  Code skip(uint32_t field, uint32_t wire_type);

  // Refuses a known field that arrived with the wrong wire type.
  KS_COLD Code wrong_wire_type() { return fail(Code::kBadWireType, last_tag_, "wrong wire type"); }

 private:
  Code varint_slow(uint64_t* out);
  Code skip_group(uint32_t field);
  KS_COLD Code fail(Code code, const uint8_t* at, const char* what) {
    fail_offset_ = static_cast<uint32_t>(at - base_);
    fail_what_ = what;
    return code;
  }

  const uint8_t* base_;
  const uint8_t* limit_;  // end of the whole buffer: bytes up to here may be read ahead
  const uint8_t* p_;
  const uint8_t* end_;
  const uint8_t* last_tag_ = p_;
  uint32_t fail_offset_ = 0;
  const char* fail_what_ = "";
};

}  // namespace wire
}  // namespace keystone
