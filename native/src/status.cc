#include "keystone/status.h"

namespace keystone {
namespace {

struct CodeInfo {
  const char* name;
  const char* description;
};

constexpr CodeInfo kCodes[] = {
    {"ok", "no error"},
    {"truncated", "the input ends inside a tag, varint or fixed-width value"},
    {"varint_too_long", "a varint runs past 10 bytes"},
    {"bad_wire_type",
     "wire type 6 or 7, a known field with the wrong wire type, or an end-group tag without its start"},
    {"invalid_field_number", "field number 0, or a tag wider than 32 bits"},
    {"length_past_end", "a length-delimited field declares more bytes than remain"},
    {"invalid_utf8", "a string field is not valid UTF-8"},
    {"nesting_too_deep", "unknown groups nested deeper than 32 levels"},
    {"too_many_orders", "the batch holds more orders than max_orders_per_batch"},
    {"too_many_items", "an order holds more items than max_items_per_order"},
    {"too_many_payments", "an order holds more payments than max_payments_per_order"},
    {"batch_id_empty", "batch_id is empty"},
    {"batch_id_too_long", "batch_id is longer than max_batch_id_bytes"},
    {"source_too_long", "source is longer than max_source_bytes"},
    {"batch_too_large", "the batch, or a column built from it, would reach 2 GiB"},
    {"codec", "the compression codec refused the data (corrupt, or too large once decompressed)"},
    {"corrupt_record_batch", "a Kafka record batch whose header, CRC or records do not add up"},
    {"offset_out_of_order", "a record's offset is at or before the last one the log dedup window observed"},
};
static_assert(sizeof(kCodes) / sizeof(kCodes[0]) == static_cast<size_t>(Code::kCount_),
              "every Code needs a name and a description");

}  // namespace

const char* code_name(Code code) { return kCodes[static_cast<size_t>(code)].name; }
const char* code_description(Code code) { return kCodes[static_cast<size_t>(code)].description; }

}  // namespace keystone
