#include "keystone/wire.h"

namespace keystone::wire {

Code Reader::varint_slow(uint64_t* out) {
  const uint8_t* start = p_;
  uint64_t result = 0;
  // A varint is at most 10 bytes; bits past 64 in the 10th byte are dropped,
  // as upb does, but a continuation bit there is an error.
  for (int i = 0; i < 10; ++i) {
    if (KS_UNLIKELY(p_ >= end_)) return fail(Code::kTruncated, start, "truncated varint");
    const uint8_t b = *p_++;
    result |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
    if (b < 0x80) {
      *out = result;
      return Code::kOk;
    }
  }
  return fail(Code::kVarintTooLong, start, "varint longer than 10 bytes");
}

// skip and skip_group call each other, but only one level deep: skip_group
// passes skip the fields that are not groups.
// NOLINTNEXTLINE(misc-no-recursion)
Code Reader::skip(uint32_t field, uint32_t wire_type) {
  uint64_t ignored64;
  uint32_t ignored32;
  Span ignored_span;
  switch (wire_type) {
    case kVarint: return varint(&ignored64);
    case kI64: return fixed64(&ignored64);
    case kLen: return len(&ignored_span);
    case kI32: return fixed32(&ignored32);
    case kStartGroup: return skip_group(field);
    default:  // kEndGroup: an end with no start at this level
      return fail(Code::kBadWireType, last_tag_, "end-group tag without a start-group");
  }
}

// Groups (proto2's deprecated nested encoding) are skipped without recursion:
// a small stack of open field numbers, bounded by kMaxGroupDepth, so hostile
// nesting can neither overflow the C++ stack nor run unbounded.
// NOLINTNEXTLINE(misc-no-recursion): one level deep, see skip
Code Reader::skip_group(uint32_t field) {
  uint32_t open[kMaxGroupDepth];
  int depth = 0;
  open[depth++] = field;
  while (depth > 0) {
    if (KS_UNLIKELY(at_end())) return fail(Code::kTruncated, p_, "group without its end-group tag");
    uint32_t f = 0, wt = 0;
    KS_TRY(tag(&f, &wt));
    if (wt == kStartGroup) {
      if (KS_UNLIKELY(depth == kMaxGroupDepth)) {
        return fail(Code::kNestingTooDeep, last_tag_, "groups nested more than 32 deep");
      }
      open[depth++] = f;
    } else if (wt == kEndGroup) {
      if (KS_UNLIKELY(f != open[depth - 1])) {
        return fail(Code::kBadWireType, last_tag_, "end-group tag does not match its start-group");
      }
      --depth;
    } else {
      KS_TRY(skip(f, wt));
    }
  }
  return Code::kOk;
}

// The well-formed ranges of Unicode's Table 3-7, one sequence at a time.
bool valid_utf8_from(const uint8_t* data, size_t size, size_t from) {
  size_t i = from;
  while (i < size) {
    if (i + 8 <= size) {
      uint64_t word;
      std::memcpy(&word, data + i, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const uint8_t c = data[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      need = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      if (c == 0xe0) lo = 0xa0;       // no overlong 3-byte forms
      else if (c == 0xed) hi = 0x9f;  // no surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      if (c == 0xf0) lo = 0x90;       // no overlong 4-byte forms
      else if (c == 0xf4) hi = 0x8f;  // nothing above U+10FFFF
    } else {
      return false;  // continuation byte, overlong lead 0xc0/0xc1, or 0xf5..0xff
    }
    if (size - i <= need) return false;
    if (data[i + 1] < lo || data[i + 1] > hi) return false;
    for (size_t k = 2; k <= need; ++k) {
      if ((data[i + k] & 0xc0) != 0x80) return false;
    }
    i += need + 1;
  }
  return true;
}

}  // namespace keystone::wire
