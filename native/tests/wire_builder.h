// Hand-built protobuf wire bytes for the C++ tests: enough to write any
// message of the contract, and to write it wrong on purpose.
#pragma once

#include <cstdint>
#include <string>

namespace wirebuild {

inline std::string varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

inline std::string tag(uint32_t field, uint32_t wire_type) { return varint((uint64_t{field} << 3) | wire_type); }
inline std::string vfield(uint32_t field, uint64_t v) { return tag(field, 0) + varint(v); }
inline std::string lfield(uint32_t field, const std::string& bytes) {
  return tag(field, 2) + varint(bytes.size()) + bytes;
}
inline std::string timestamp(int64_t seconds, int32_t nanos) {
  return vfield(1, static_cast<uint64_t>(seconds)) + vfield(2, static_cast<uint64_t>(static_cast<int64_t>(nanos)));
}

// A valid order: event e, order o, one item, one payment, a customer.
inline std::string order(const std::string& event_id, const std::string& order_id) {
  std::string item = vfield(1, 1) + lfield(2, "prod") + lfield(3, "sell") + vfield(5, 1999) + vfield(6, 500);
  std::string payment = vfield(1, 1) + vfield(2, 1) + vfield(3, 2) + vfield(4, 2499);
  std::string customer = lfield(1, "uniq") + lfield(2, "01310") + lfield(3, "sao paulo") + lfield(4, "SP");
  return lfield(1, event_id) + lfield(2, order_id) + lfield(3, "cust") + vfield(4, 6) +
         lfield(5, timestamp(1500000000, 250000000)) + lfield(10, item) + lfield(11, payment) + lfield(12, customer);
}

inline std::string batch(const std::string& batch_id, const std::string& orders_wire) {
  return lfield(1, batch_id) + lfield(2, "test") + orders_wire;
}

inline const uint8_t* bytes(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

}  // namespace wirebuild
