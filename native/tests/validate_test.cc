#include "keystone/validate.h"

#include <string>

#include "check.h"
#include "wire_builder.h"

using namespace keystone;
using namespace wirebuild;

static std::vector<Rejection> reject_reasons(const std::string& orders_wire, std::vector<Verdict>* verdicts) {
  std::string s = batch("b", orders_wire);
  BatchView v;
  Error e;
  CHECK_EQ(decode_batch(bytes(s), s.size(), DecodeLimits{}, &v, &e), Code::kOk);
  std::vector<Rejection> rejections;
  validate_orders(v, ValidationOptions{}, verdicts, &rejections);
  return rejections;
}

TEST(year_bounds_are_utc_midnights) {
  CHECK_EQ(year_start_seconds(1970), 0);
  CHECK_EQ(year_start_seconds(2000), 946684800);
  CHECK_EQ(year_start_seconds(2101), 4133980800);
}

TEST(a_bad_order_is_rejected_alone_with_its_first_failing_rule) {
  std::string bad = lfield(1, "e2") + lfield(3, "c") + vfield(4, 0);  // no order_id, no status
  std::vector<Verdict> verdicts;
  auto rejections = reject_reasons(lfield(3, order("e1", "o1")) + lfield(3, bad), &verdicts);
  CHECK_EQ(verdicts.size(), 2u);
  CHECK(verdicts[0] == Verdict::kAccept);
  CHECK(verdicts[1] == Verdict::kReject);
  CHECK_EQ(rejections.size(), 1u);
  CHECK_EQ(rejections[0].index, 1u);
  CHECK_EQ(std::string(reason_name(rejections[0].reason)), "order_id_empty");
  CHECK_EQ(rejections[0].message, "order_id is empty");
}

TEST(repeated_item_ids_are_found_in_long_orders_too) {
  for (int n : {3, 40}) {
    std::string o = lfield(2, "o") + lfield(3, "c") + vfield(4, 1) + lfield(5, vfield(1, 1500000000));
    for (int i = 1; i <= n; ++i) o += lfield(10, vfield(1, i == n ? 2 : i));
    std::vector<Verdict> verdicts;
    auto rejections = reject_reasons(lfield(3, o), &verdicts);
    CHECK_EQ(rejections.size(), 1u);
    CHECK_EQ(rejections[0].message, "items[" + std::to_string(n - 1) + "].order_item_id 2 repeats items[1]");
  }
}

TEST(batch_id_rules_refuse_the_whole_batch) {
  BatchView v;
  Error e;
  std::string empty = batch("", "");
  CHECK_EQ(decode_batch(bytes(empty), empty.size(), DecodeLimits{}, &v, &e), Code::kOk);
  CHECK_EQ(validate_batch(v, ValidationOptions{}, &e), Code::kBatchIdEmpty);
  CHECK_EQ(e.offset, -1);
  std::string long_id = batch(std::string(129, 'b'), "");
  CHECK_EQ(decode_batch(bytes(long_id), long_id.size(), DecodeLimits{}, &v, &e), Code::kOk);
  CHECK_EQ(validate_batch(v, ValidationOptions{}, &e), Code::kBatchIdTooLong);
  CHECK_EQ(e.message, "batch_id is 129 bytes, more than the 128 allowed");
}
