#include "keystone/kafka_hash.h"

#include <string>

#include "check.h"

using namespace keystone;

static int32_t hash(const std::string& s) {
  return kafka_key_hash(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// Vectors from Kafka's own UtilsTest.testMurmur2 (signed Java ints), made
// positive the way its partitioner does.
TEST(matches_the_java_clients_murmur2) {
  CHECK_EQ(hash("21"), -973932308 & 0x7fffffff);
  CHECK_EQ(hash("foobar"), -790332482 & 0x7fffffff);
  CHECK_EQ(hash("a-little-bit-long-string"), -985981536 & 0x7fffffff);
  CHECK_EQ(hash("a-little-bit-longer-string"), -1486304829 & 0x7fffffff);
  CHECK_EQ(hash("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971 & 0x7fffffff);
  CHECK_EQ(hash("abc"), 479470107);
}

// Lengths with remainder 1 and 0 that Kafka's vectors miss, and an Olist-style
// 32-hex-digit id; expected values from aiokafka's independent murmur2.
TEST(every_tail_length_matches_an_independent_implementation) {
  CHECK_EQ(hash(""), 275646681);
  CHECK_EQ(hash("a"), 584102524);
  CHECK_EQ(hash("abcde"), 461995741);
  CHECK_EQ(hash("0123456789abcdef0123456789abcdef"), 81657833);
}
