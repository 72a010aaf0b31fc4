#include "keystone/log_dedup.h"

#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "check.h"

using namespace keystone;

namespace {

Key128 key(uint64_t n) { return Key128{n * 0x9e3779b97f4a7c15ull + 1, n}; }

bool observe(LogDedup& d, int64_t offset, int64_t ts, uint64_t k) {
  bool duplicate = false;
  Error error;
  CHECK_EQ(d.observe(offset, ts, key(k), &duplicate, &error), Code::kOk);
  return duplicate;
}

}  // namespace

TEST(a_key_repeated_inside_both_bounds_is_a_duplicate_and_exactly_at_them_too) {
  LogDedup d(10, 1000);
  CHECK(!observe(d, 100, 5000, 1));
  CHECK(observe(d, 110, 6000, 1));   // o - o' == window_records, ts - ts' == window_ms
  CHECK(!observe(d, 121, 6000, 1));  // 11 records later
  CHECK(!observe(d, 125, 7001, 1));  // 1001 ms later
  CHECK(observe(d, 126, 3000, 1));   // earlier timestamps are inside the window
}

TEST(every_occurrence_becomes_the_latest_so_a_chain_of_repeats_stays_duplicate) {
  LogDedup d(5, 1000000);
  CHECK(!observe(d, 0, 0, 7));
  for (int64_t o = 5; o <= 50; o += 5) CHECK(observe(d, o, 0, 7));
  CHECK(!observe(d, 56, 0, 7));
}

TEST(offsets_must_increase_and_a_refused_one_changes_nothing) {
  LogDedup d(100, 1000);
  CHECK(!observe(d, 10, 0, 1));
  bool duplicate = true;
  Error error;
  CHECK_EQ(d.observe(10, 0, key(2), &duplicate, &error), Code::kOffsetOutOfOrder);
  CHECK(error.message.find("offset 10 is not after 10") != std::string::npos);
  CHECK_EQ(d.observe(-1, 0, key(2), &duplicate, &error), Code::kOffsetOutOfOrder);
  CHECK_EQ(d.last_offset(), 10);
  CHECK_EQ(d.size(), 1u);
  CHECK(observe(d, 11, 0, 1));
}

TEST(memory_is_bounded_by_the_window_and_reset_starts_over) {
  LogDedup d(1000, 1000);
  for (int64_t o = 0; o < 100000; ++o) observe(d, o, o, static_cast<uint64_t>(o));
  CHECK(d.size() <= 1000u);
  CHECK_EQ(d.last_offset(), 99999);
  d.reset();
  CHECK_EQ(d.size(), 0u);
  CHECK_EQ(d.last_offset(), -1);
  CHECK(!observe(d, 0, 0, 99999));
}

TEST(a_window_of_no_records_dedups_nothing) {
  LogDedup d(0, 1000);
  CHECK(!observe(d, 1, 0, 1));
  CHECK(!observe(d, 2, 0, 1));
  CHECK_EQ(d.size(), 0u);
}

// The definition, checked against a map of every occurrence, with gaps in the
// offsets, timestamps that go back, a small key space and windows that make
// the FIFO grow and wrap.
TEST(decisions_match_the_definition_on_random_logs_and_repeat_on_a_re_read) {
  for (int64_t window : {1, 7, 64, 1000}) {
    std::mt19937_64 rng(static_cast<uint64_t>(window));
    std::vector<std::pair<int64_t, int64_t>> log;  // (offset, ts)
    std::vector<uint64_t> keys;
    int64_t offset = 0, ts = 1000000;
    for (int i = 0; i < 20000; ++i) {
      offset += 1 + static_cast<int64_t>(rng() % 3);
      ts += static_cast<int64_t>(rng() % 200) - 60;
      log.emplace_back(offset, ts);
      keys.push_back(rng() % 300);
    }
    std::vector<bool> first;
    for (int pass = 0; pass < 2; ++pass) {
      LogDedup d(window, 500);
      std::map<uint64_t, std::pair<int64_t, int64_t>> latest;
      std::vector<bool> decisions;
      for (size_t i = 0; i < log.size(); ++i) {
        const auto [o, t] = log[i];
        auto it = latest.find(keys[i]);
        const bool expected = it != latest.end() && o - window <= it->second.first && t - it->second.second <= 500;
        const bool got = observe(d, o, t, keys[i]);
        CHECK_EQ(got, expected);
        latest[keys[i]] = {o, t};
        decisions.push_back(got);
        CHECK(d.size() <= static_cast<size_t>(window));
      }
      if (pass == 0) first = decisions;
      CHECK(decisions == first);
    }
  }
}
