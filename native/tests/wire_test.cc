#include "keystone/wire.h"

#include <string>

#include "check.h"
#include "wire_builder.h"

using keystone::Code;
using keystone::Span;
using keystone::wire::Reader;
using keystone::wire::valid_utf8;
using namespace wirebuild;

static Reader reader(const std::string& s) { return Reader(bytes(s), s.size()); }

TEST(varint_round_trips_every_width) {
  for (uint64_t v :
       {uint64_t{0}, uint64_t{1}, uint64_t{127}, uint64_t{128}, uint64_t{300}, uint64_t{1} << 35, UINT64_MAX}) {
    std::string s = varint(v);
    Reader r = reader(s);
    uint64_t got = 0;
    CHECK_EQ(r.varint(&got), Code::kOk);
    CHECK_EQ(got, v);
    CHECK(r.at_end());
  }
}

TEST(eleven_byte_varint_is_too_long) {
  std::string s(10, '\xff');
  s.push_back('\x01');
  Reader r = reader(s);
  uint64_t v;
  CHECK_EQ(r.varint(&v), Code::kVarintTooLong);
  CHECK_EQ(r.fail_offset(), 0u);
}

TEST(varint_cut_short_is_truncated_at_its_start) {
  std::string s = "\x08" + varint(300).substr(0, 1);
  Reader r = reader(s);
  uint32_t f, wt;
  uint64_t v;
  CHECK_EQ(r.tag(&f, &wt), Code::kOk);
  CHECK_EQ(r.varint(&v), Code::kTruncated);
  CHECK_EQ(r.fail_offset(), 1u);
}

TEST(field_number_zero_and_wire_types_6_7_are_refused) {
  uint32_t f, wt;
  const std::string zero = varint(0 << 3 | 2), six = tag(1, 6), seven = tag(1, 7), wide = varint(uint64_t{1} << 33);
  Reader r0 = reader(zero), r6 = reader(six), r7 = reader(seven), rw = reader(wide);
  CHECK_EQ(r0.tag(&f, &wt), Code::kInvalidFieldNumber);
  CHECK_EQ(r6.tag(&f, &wt), Code::kBadWireType);
  CHECK_EQ(r7.tag(&f, &wt), Code::kBadWireType);
  CHECK_EQ(rw.tag(&f, &wt), Code::kInvalidFieldNumber);
}

TEST(length_past_the_end_reports_the_length_prefix) {
  std::string s = tag(2, 2) + varint(10) + "abc";
  Reader r = reader(s);
  uint32_t f, wt;
  Span span;
  CHECK_EQ(r.tag(&f, &wt), Code::kOk);
  CHECK_EQ(r.len(&span), Code::kLengthPastEnd);
  CHECK_EQ(r.fail_offset(), 1u);
  std::string huge = tag(2, 2) + varint(UINT64_MAX);
  Reader h = reader(huge);
  CHECK_EQ(h.tag(&f, &wt), Code::kOk);
  CHECK_EQ(h.len(&span), Code::kLengthPastEnd);
}

TEST(unknown_fields_of_every_wire_type_are_skipped) {
  std::string s = vfield(90, 5) + tag(91, 1) + std::string(8, 'x') + lfield(92, "hello") + tag(93, 5) +
                  std::string(4, 'y') + tag(94, 3) + vfield(1, 7) + lfield(2, "in group") + tag(95, 3) + tag(95, 4) +
                  tag(94, 4) + vfield(7, 1);
  Reader r = reader(s);
  uint32_t f, wt;
  for (int i = 0; i < 5; ++i) {
    CHECK_EQ(r.tag(&f, &wt), Code::kOk);
    CHECK_EQ(r.skip(f, wt), Code::kOk);
  }
  CHECK_EQ(r.tag(&f, &wt), Code::kOk);
  CHECK_EQ(f, 7u);
}

TEST(groups_nested_past_the_limit_are_refused_without_recursion) {
  std::string s;
  for (int i = 0; i < 100000; ++i) s += tag(5, 3);
  Reader r = reader(s);
  uint32_t f, wt;
  CHECK_EQ(r.tag(&f, &wt), Code::kOk);
  CHECK_EQ(r.skip(f, wt), Code::kNestingTooDeep);
}

TEST(mismatched_or_stray_end_group_is_a_bad_wire_type) {
  uint32_t f, wt;
  std::string mismatched = tag(5, 3) + tag(6, 4);
  Reader r = reader(mismatched);
  CHECK_EQ(r.tag(&f, &wt), Code::kOk);
  CHECK_EQ(r.skip(f, wt), Code::kBadWireType);
  const std::string stray_end = tag(5, 4);
  Reader stray = reader(stray_end);
  CHECK_EQ(stray.tag(&f, &wt), Code::kOk);
  CHECK_EQ(stray.skip(f, wt), Code::kBadWireType);
  std::string open = tag(5, 3) + vfield(1, 1);
  Reader unterminated = reader(open);
  CHECK_EQ(unterminated.tag(&f, &wt), Code::kOk);
  CHECK_EQ(unterminated.skip(f, wt), Code::kTruncated);
}

TEST(utf8_accepts_well_formed_text) {
  for (const char* s : {"", "plain ascii that is longer than eight bytes", "S\xc3\xa3o Paulo", "\xe2\x82\xac",
                        "\xf0\x9f\x98\x80", "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf"}) {
    CHECK(valid_utf8(reinterpret_cast<const uint8_t*>(s), std::char_traits<char>::length(s)));
  }
}

TEST(utf8_refuses_overlong_surrogate_out_of_range_and_cut_sequences) {
  for (const char* s : {"\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80", "\xf0\x80\x80\x80", "\xf4\x90\x80\x80",
                        "\xf5\x80\x80\x80", "\x80", "abc\xc3", "\xe2\x82", "\xe2\x28\xa1", "12345678\xff"}) {
    CHECK(!valid_utf8(reinterpret_cast<const uint8_t*>(s), std::char_traits<char>::length(s)));
  }
}
