#include "keystone/dedup.h"

#include <map>
#include <random>
#include <set>
#include <vector>

#include "check.h"

using namespace keystone;

static Key128 key(uint64_t i) { return hash128(reinterpret_cast<const uint8_t*>(&i), sizeof i, 42); }

// Runs one key through the window as a one-order batch; true when accepted.
static bool offer(DedupWindow& w, const Key128& k, int64_t now_ms) {
  Verdict v = Verdict::kAccept;
  std::vector<Key128> inserted;
  w.apply(&k, &v, 1, now_ms, &inserted);
  return v == Verdict::kAccept;
}

TEST(hash_depends_on_every_byte_length_and_seed) {
  const std::string a(40, 'a');
  std::string b = a;
  b[39] = 'b';
  auto h = [](const std::string& s, uint64_t seed) {
    return hash128(reinterpret_cast<const uint8_t*>(s.data()), s.size(), seed);
  };
  CHECK(h(a, 1) == h(a, 1));
  CHECK(!(h(a, 1) == h(b, 1)));
  CHECK(!(h(a, 1) == h(a, 2)));
  CHECK(!(h(a, 1) == h(a + std::string(1, '\0'), 1)));
  CHECK(!(h("", 1) == h(std::string(1, '\0'), 1)));
}

TEST(duplicates_within_one_call_keep_the_first) {
  DedupWindow w(DedupOptions{});
  Key128 keys[3] = {key(1), key(2), key(1)};
  Verdict v[3] = {Verdict::kAccept, Verdict::kReject, Verdict::kAccept};
  std::vector<Key128> inserted;
  w.apply(keys, v, 3, 0, &inserted);
  CHECK(v[0] == Verdict::kAccept);
  CHECK(v[1] == Verdict::kReject);  // rejected orders take no part
  CHECK(v[2] == Verdict::kDuplicate);
  CHECK_EQ(inserted.size(), 1u);
  CHECK_EQ(w.size(), 1u);
}

TEST(full_window_forgets_its_oldest_key_first) {
  DedupOptions o;
  o.max_keys = 3;
  DedupWindow w(o);
  for (uint64_t i = 0; i < 4; ++i) CHECK(offer(w, key(i), 0));
  CHECK_EQ(w.size(), 3u);
  CHECK(offer(w, key(0), 0));   // evicted, so new again (and evicts key 1)
  CHECK(!offer(w, key(2), 0));  // still there
  CHECK(offer(w, key(1), 0));
}

TEST(keys_expire_at_max_age) {
  DedupOptions o;
  o.max_age_ms = 1000;
  DedupWindow w(o);
  CHECK(offer(w, key(7), 5000));
  CHECK(!offer(w, key(7), 5999));
  CHECK(offer(w, key(7), 6000));
}

TEST(forgotten_keys_free_their_capacity_even_in_the_middle_of_the_ring) {
  DedupOptions o;
  o.max_keys = 4;
  DedupWindow w(o);
  for (uint64_t i = 0; i < 4; ++i) CHECK(offer(w, key(i), 0));
  Key128 middle = key(1);
  CHECK_EQ(w.forget(&middle, 1), 1u);
  CHECK(offer(w, key(9), 0));  // compacts the ring instead of evicting key 0
  CHECK_EQ(w.size(), 4u);
  for (uint64_t i : {0, 2, 3, 9}) CHECK(!offer(w, key(i), 0));
  CHECK(offer(w, key(10), 0));  // full again: now key 0, the oldest, leaves
  CHECK(offer(w, key(0), 0));
}

TEST(forget_removes_exactly_the_given_keys) {
  DedupWindow w(DedupOptions{});
  Key128 keys[2] = {key(1), key(2)};
  Verdict v[2] = {Verdict::kAccept, Verdict::kAccept};
  std::vector<Key128> inserted;
  w.apply(keys, v, 2, 0, &inserted);
  CHECK_EQ(w.forget(&keys[0], 1), 1u);
  CHECK_EQ(w.forget(&keys[0], 1), 0u);
  CHECK(offer(w, key(1), 0));
  CHECK(!offer(w, key(2), 0));
}

// The index against a plain model under random inserts, forgets, capacity
// and age evictions: backward-shift deletion and ring compaction must never
// lose or invent a key.
TEST(window_matches_a_simple_model_under_random_operations) {
  DedupOptions o;
  o.max_keys = 64;
  o.max_age_ms = 500;
  DedupWindow w(o);
  std::mt19937_64 rng(7);
  std::vector<std::pair<uint64_t, int64_t>> fifo;  // live (id, inserted_ms), oldest first
  int64_t now = 0;
  for (int step = 0; step < 200000; ++step) {
    now += static_cast<int64_t>(rng() % 3);
    const uint64_t id = 1 + rng() % 200;
    auto live = [&](uint64_t x) {
      for (auto& e : fifo)
        if (e.first == x) return true;
      return false;
    };
    if (rng() % 5 == 0) {
      Key128 k = key(id);
      const size_t removed = w.forget(&k, 1);
      CHECK_EQ(removed, live(id) ? 1u : 0u);
      for (size_t i = 0; i < fifo.size(); ++i) {
        if (fifo[i].first == id) fifo.erase(fifo.begin() + static_cast<std::ptrdiff_t>(i));
      }
      continue;
    }
    while (!fifo.empty() && now - fifo.front().second >= o.max_age_ms) fifo.erase(fifo.begin());
    const bool expect_new = !live(id);
    CHECK_EQ(offer(w, key(id), now), expect_new);
    if (expect_new) {
      if (fifo.size() == o.max_keys) fifo.erase(fifo.begin());
      fifo.emplace_back(id, now);
    }
    CHECK_EQ(w.size(), fifo.size());
  }
}
