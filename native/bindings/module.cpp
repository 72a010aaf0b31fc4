// keystone_ingest._core: the only pybind11 file. It releases the GIL around
// the core, turns an Error into keystone_ingest.core.InvalidBatch (or, for
// fetched Kafka records, CorruptRecords), and hands Arrow data out as
// PyCapsules (the Arrow PyCapsule protocol).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "keystone/arrow.h"
#include "keystone/bronze_decode.h"
#include "keystone/codec.h"
#include "keystone/log_dedup.h"
#include "keystone/pipeline.h"
#include "keystone/records.h"

namespace py = pybind11;
using namespace keystone;

// Dedup keys and entries cross into Python as the structs' bytes: 16 bytes
// per key (lo, hi) and 24 per entry (lo, hi, inserted_ms), little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the dedup state's byte format is little-endian");
static_assert(sizeof(Key128) == 16, "a dedup key is exported as 16 bytes");

namespace {

// Capsule destructors release only what the consumer has not taken: a
// consumer that imports the structure moves it out and sets release to null.
void free_schema_capsule(PyObject* capsule) {
  auto* s = static_cast<ArrowSchema*>(PyCapsule_GetPointer(capsule, "arrow_schema"));
  if (s == nullptr) return;
  if (s->release != nullptr) s->release(s);
  delete s;
}

void free_array_capsule(PyObject* capsule) {
  auto* a = static_cast<ArrowArray*>(PyCapsule_GetPointer(capsule, "arrow_array"));
  if (a == nullptr) return;
  if (a->release != nullptr) a->release(a);
  delete a;
}

py::object schema_capsule(TableId id) {
  auto* s = new ArrowSchema;
  export_schema(id, s);
  return py::reinterpret_steal<py::object>(PyCapsule_New(s, "arrow_schema", free_schema_capsule));
}

// One table of a result, or (table == nullptr) just a table's schema.
class ArrowBatch {
 public:
  ArrowBatch(TableId id, std::shared_ptr<const Table> table) : id_(id), table_(std::move(table)) {}

  std::string name() const { return table_def(id_).name; }
  int64_t num_rows() const { return table_ ? table_->num_rows : 0; }
  py::object c_schema() const { return schema_capsule(id_); }

  py::tuple c_array(const py::object& /*requested_schema*/) const {
    if (!table_) throw py::type_error("schema(" + name() + ") carries a schema only, no rows");
    auto* a = new ArrowArray;
    export_table(table_, a);
    py::object array = py::reinterpret_steal<py::object>(PyCapsule_New(a, "arrow_array", free_array_capsule));
    return py::make_tuple(schema_capsule(id_), array);
  }

 private:
  TableId id_;
  std::shared_ptr<const Table> table_;
};

class PyBatchResult {
 public:
  explicit PyBatchResult(BatchOutput out) : out_(std::move(out)) {}

  const BatchOutput& output() const { return out_; }

  ArrowBatch table(TableId id) const {
    const auto& t = out_.tables.tables[static_cast<size_t>(id)];
    if (!t) {
      throw py::value_error(std::string("the ") + table_def(id).name +
                            " table was not built: this Core was made with bronze_tables=False");
    }
    return ArrowBatch(id, t);
  }

  ArrowBatch table_named(const std::string& name) const {
    const TableId id = table_by_name(name.c_str());
    if (static_cast<size_t>(id) >= kIngestTableCount) throw py::key_error("no table named " + name);
    return table(id);
  }

  py::list errors(std::optional<size_t> limit) const {
    py::object record_error = py::module_::import("keystone_ingest.core").attr("RecordError");
    const size_t n = std::min(out_.rejections.size(), limit.value_or(out_.rejections.size()));
    // The rejects table already holds each event_id as UTF-8; read it from there.
    const Table& rejects = *out_.tables.tables[static_cast<size_t>(TableId::kRejects)];
    const auto* offsets = reinterpret_cast<const int32_t*>(rejects.columns[1].values.data());
    const auto* chars = reinterpret_cast<const char*>(rejects.columns[1].data.data());
    py::list list;
    for (size_t i = 0; i < n; ++i) {
      const Rejection& r = out_.rejections[i];
      list.append(record_error(r.index, py::str(chars + offsets[i], offsets[i + 1] - offsets[i]), reason_name(r.reason),
                               r.message));
    }
    return list;
  }

  std::string repr() const {
    return "<BatchResult batch_id=" + py::repr(py::str(out_.batch_id)).cast<std::string>() +
           " accepted=" + std::to_string(out_.accepted) + " duplicates=" + std::to_string(out_.duplicates) +
           " rejected=" + std::to_string(out_.rejected) + ">";
  }

 private:
  BatchOutput out_;
};

[[noreturn]] void raise_invalid_batch(const Error& e) {
  py::object cls = py::module_::import("keystone_ingest.core").attr("InvalidBatch");
  py::object offset = e.offset >= 0 ? py::object(py::int_(e.offset)) : py::object(py::none());
  py::object exc = cls(code_name(e.code), offset, e.message);
  PyErr_SetObject(cls.ptr(), exc.ptr());
  throw py::error_already_set();
}

int64_t wall_clock_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

uint32_t positive_u32(int64_t v, const char* name, int64_t max = UINT32_MAX) {
  if (v < 1 || v > max) {
    throw py::value_error(std::string(name) + " must be between 1 and " + std::to_string(max) + ", got " +
                          std::to_string(v));
  }
  return static_cast<uint32_t>(v);
}

py::buffer_info contiguous_bytes(const py::buffer& data, const char* caller) {
  py::buffer_info info = data.request();
  if (info.ndim != 1 || info.itemsize != 1 || info.strides[0] != 1) {
    throw py::type_error(std::string(caller) + "() takes contiguous bytes (bytes, bytearray or a 1-D byte memoryview)");
  }
  return info;
}

class PyCore {
 public:
  PyCore(int64_t dedup_max_keys, double dedup_max_age_s, int64_t max_orders_per_batch, int64_t max_items_per_order,
         int64_t max_payments_per_order, int64_t max_batch_id_bytes, int64_t max_source_bytes,
         int64_t max_event_id_bytes, int64_t max_id_bytes, int64_t max_text_bytes, int32_t min_year, int32_t max_year,
         bool bronze_tables) {
    if (dedup_max_keys < 0 || dedup_max_keys > (int64_t{1} << 30)) {
      throw py::value_error("dedup_max_keys must be between 0 and 2**30, got " + std::to_string(dedup_max_keys));
    }
    if (!(dedup_max_age_s > 0) || !std::isfinite(dedup_max_age_s)) {
      throw py::value_error("dedup_max_age_s must be a positive number of seconds");
    }
    if (min_year < 1 || max_year > 9999 || min_year > max_year) {
      throw py::value_error("need 1 <= min_year <= max_year <= 9999");
    }
    options_.limits.max_orders = positive_u32(max_orders_per_batch, "max_orders_per_batch", 1 << 24);
    options_.limits.max_items_per_order = positive_u32(max_items_per_order, "max_items_per_order", 1 << 20);
    options_.limits.max_payments_per_order = positive_u32(max_payments_per_order, "max_payments_per_order", 1 << 20);
    options_.validation.max_batch_id_bytes = positive_u32(max_batch_id_bytes, "max_batch_id_bytes");
    options_.validation.max_source_bytes = positive_u32(max_source_bytes, "max_source_bytes");
    options_.validation.max_event_id_bytes = positive_u32(max_event_id_bytes, "max_event_id_bytes");
    options_.validation.max_id_bytes = positive_u32(max_id_bytes, "max_id_bytes");
    options_.validation.max_text_bytes = positive_u32(max_text_bytes, "max_text_bytes");
    options_.validation.min_year = min_year;
    options_.validation.max_year = max_year;
    options_.bronze_tables = bronze_tables;
    DedupOptions dedup;
    dedup.max_keys = static_cast<uint32_t>(dedup_max_keys);
    dedup.max_age_ms = static_cast<int64_t>(std::llround(dedup_max_age_s * 1000.0));
    window_ = std::make_unique<DedupWindow>(dedup);
  }

  PyBatchResult process(const py::buffer& data, std::optional<int64_t> now_ms) {
    // The caller must not modify a writable buffer during the call.
    py::buffer_info info = contiguous_bytes(data, "process");
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    const size_t size = static_cast<size_t>(info.size);
    const int64_t now = now_ms.value_or(wall_clock_ms());
    std::optional<Result<BatchOutput>> result;
    {
      py::gil_scoped_release release;
      result.emplace(process_batch(bytes, size, options_, window_.get(), now));
    }
    if (!result->ok()) raise_invalid_batch(result->error());
    return PyBatchResult(std::move(result->value()));
  }

  size_t forget(const PyBatchResult& r) {
    const auto& keys = r.output().inserted_keys;
    py::gil_scoped_release release;
    return window_->forget(keys.data(), keys.size());
  }

  size_t dedup_size() const { return window_->size(); }
  size_t dedup_memory_bytes() const { return window_->memory_bytes(); }
  double dedup_bytes_per_key() const {
    return window_->max_keys() == 0 ? 0.0 : static_cast<double>(window_->memory_bytes()) / window_->max_keys();
  }

 private:
  ProcessOptions options_;
  std::unique_ptr<DedupWindow> window_;
};

// A Kafka record batch under construction, with the interface aiokafka's
// producer expects of a batch builder handed to send_batch(): record_count(),
// closed(), close(), _set_producer_state() at the first send, _build() for
// the bytes. Appends encode records straight from the request (one call per
// OrderBatch and partition); close() compresses, with the GIL released, and
// should run off the event loop; _build() only copies the finished batch.
class PyRecordBatchBuilder {
 public:
  PyRecordBatchBuilder(const std::string& codec, int level, int64_t max_bytes)
      : builder_(parse_codec(codec), level, positive_size(max_bytes)) {}

  size_t append_orders(const PyBatchResult& result, const py::buffer& raw, int32_t partition, int32_t partitions,
                       size_t start, int64_t timestamp_ms, const py::list& headers) {
    if (partitions < 1 || partition < 0 || partition >= partitions) {
      throw py::value_error("partition " + std::to_string(partition) + " is not one of " + std::to_string(partitions) +
                            " partitions");
    }
    py::buffer_info info = request_of(result, raw);
    HeaderList common(headers);
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    py::gil_scoped_release release;
    return append_orders_to(bytes, result, partition, partitions, start, timestamp_ms, common);
  }

  size_t append_rejects(const PyBatchResult& result, const py::buffer& raw, size_t start, int64_t timestamp_ms,
                        const py::list& headers) {
    py::buffer_info info = request_of(result, raw);
    HeaderList common(headers);
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    py::gil_scoped_release release;
    return keystone::append_rejects(&builder_, result.output(), bytes, start, timestamp_ms, common.views);
  }

  void close() {
    Error error;
    Code code;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(finish_mutex_);
      code = builder_.finish(&error);
    }
    if (code != Code::kOk) throw std::runtime_error("record batch: " + error.message);
  }

  bool closed() const { return builder_.finished(); }
  uint32_t record_count() const { return builder_.record_count(); }
  size_t size() const { return builder_.size(); }

  void set_producer_state(int64_t producer_id, int16_t producer_epoch, int32_t base_sequence) {
    close();
    builder_.set_producer_state(producer_id, producer_epoch, base_sequence);
  }

  py::bytes build() {
    close();
    const Buffer& batch = builder_.batch();
    return py::bytes(reinterpret_cast<const char*>(batch.data()), batch.size());
  }

 private:
  struct HeaderList {
    explicit HeaderList(const py::list& pairs) {
      storage.reserve(pairs.size() * 2);
      for (const py::handle item : pairs) {
        auto pair = item.cast<std::pair<std::string, std::string>>();
        storage.push_back(std::move(pair.first));
        storage.push_back(std::move(pair.second));
      }
      for (size_t i = 0; i < storage.size(); i += 2) views.push_back({storage[i], storage[i + 1]});
    }
    std::vector<std::string> storage;
    std::vector<RecordHeader> views;
  };

  size_t append_orders_to(const uint8_t* bytes, const PyBatchResult& result, int32_t partition, int32_t partitions,
                          size_t start, int64_t timestamp_ms, const HeaderList& common) {
    return keystone::append_orders(&builder_, result.output(), bytes, partition, partitions, start, timestamp_ms,
                                   common.views);
  }

  py::buffer_info request_of(const PyBatchResult& result, const py::buffer& raw) {
    check_open();
    py::buffer_info info = contiguous_bytes(raw, "append");
    if (static_cast<size_t>(info.size) != result.output().input_bytes) {
      throw py::value_error("raw is " + std::to_string(info.size) + " bytes, but the result was made from " +
                            std::to_string(result.output().input_bytes) + ": pass the request it was made from");
    }
    return info;
  }

  void check_open() const {
    if (builder_.finished()) throw py::value_error("the record batch is closed");
  }

  static Codec parse_codec(const std::string& name) {
    Codec codec;
    if (!codec_from_name(name, &codec)) {
      throw py::value_error("codec must be none, gzip, snappy, lz4 or zstd, not " +
                            py::repr(py::str(name)).cast<std::string>());
    }
    return codec;
  }

  static size_t positive_size(int64_t v) {
    if (v < 1) throw py::value_error("max_bytes must be positive, got " + std::to_string(v));
    return static_cast<size_t>(v);
  }

  RecordBatchBuilder builder_;
  std::mutex finish_mutex_;  // close() may run on a worker thread while aiokafka asks for the bytes
};

// A LogDedup for Python. The core's window is one consumer thread's; the
// lock only keeps two Python threads that share one by mistake from
// corrupting it (the decode holds it with the GIL released).
class PyLogDedup {
 public:
  PyLogDedup(int64_t window_records, int64_t window_ms) : dedup_(check(window_records, window_ms)) {}

  void reset() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    dedup_.reset();
  }
  size_t size() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    return dedup_.size();
  }
  std::optional<int64_t> last_offset() {
    int64_t last;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      last = dedup_.last_offset();
    }
    return last < 0 ? std::nullopt : std::optional<int64_t>(last);
  }
  int64_t window_records() const { return dedup_.window_records(); }
  int64_t window_ms() const { return dedup_.window_ms(); }

  LogDedup* locked(std::unique_lock<std::mutex>* lock) {
    *lock = std::unique_lock<std::mutex>(mu_);
    return &dedup_;
  }

 private:
  static LogDedup check(int64_t window_records, int64_t window_ms) {
    if (window_records < 0 || window_records > LogDedup::kMaxWindowRecords) {
      throw py::value_error("window_records must be between 0 and 2**30, got " + std::to_string(window_records));
    }
    if (window_ms < 0) throw py::value_error("window_ms must not be negative, got " + std::to_string(window_ms));
    return LogDedup(window_records, window_ms);
  }

  LogDedup dedup_;
  std::mutex mu_;
};

class PyDecodedRecords {
 public:
  explicit PyDecodedRecords(DecodedRecords out) : out_(std::move(out)) {}

  const DecodedRecords& output() const { return out_; }

  py::dict tables() const {
    py::dict d;
    const std::pair<const char*, const std::shared_ptr<const Table>*> tables[] = {
        {"orders", &out_.tables.orders},
        {"order_items", &out_.tables.order_items},
        {"order_payments", &out_.tables.order_payments},
        {"customers", &out_.tables.customers},
        {"_quarantine", &out_.quarantine},
    };
    for (const auto& [name, table] : tables) {
      if (*table) d[name] = ArrowBatch((*table)->id, *table);
    }
    return d;
  }

  ArrowBatch child_counts() const { return ArrowBatch(TableId::kChildCounts, out_.tables.child_counts); }

  std::string repr() const {
    return "<DecodedRecords next_offset=" + std::to_string(out_.next_offset) +
           " records=" + std::to_string(out_.records) + " orders=" + std::to_string(out_.orders) +
           " duplicates=" + std::to_string(out_.duplicates) + " quarantined=" + std::to_string(out_.quarantined) + ">";
  }

 private:
  DecodedRecords out_;
};

[[noreturn]] void raise_records_error(const Error& e) {
  if (e.code == Code::kOffsetOutOfOrder) throw py::value_error(e.message);
  py::object cls = py::module_::import("keystone_ingest.core").attr("CorruptRecords");
  py::object offset = e.offset >= 0 ? py::object(py::int_(e.offset)) : py::object(py::none());
  py::object exc = cls(code_name(e.code), offset, e.message);
  PyErr_SetObject(cls.ptr(), exc.ptr());
  throw py::error_already_set();
}

enum class Topic { kOrders, kRejects };

PyDecodedRecords decode_records(Topic topic, const py::buffer& data, int64_t first_offset,
                                std::optional<int64_t> end_offset, PyLogDedup* dedup, int64_t max_batch_bytes) {
  if (first_offset < 0) throw py::value_error("first_offset must not be negative, got " + std::to_string(first_offset));
  const int64_t end = end_offset.value_or(kNoEndOffset);
  if (max_batch_bytes < 1 || max_batch_bytes > INT32_MAX) {
    throw py::value_error("max_batch_bytes must be between 1 and 2**31 - 1, got " + std::to_string(max_batch_bytes));
  }
  // The caller must not modify a writable buffer during the call.
  py::buffer_info info =
      contiguous_bytes(data, topic == Topic::kOrders ? "decode_order_records" : "decode_reject_records");
  const auto* bytes = static_cast<const uint8_t*>(info.ptr);
  const auto size = static_cast<size_t>(info.size);
  DecodedRecords out;
  Error error;
  Code code;
  {
    py::gil_scoped_release release;
    std::unique_lock<std::mutex> lock;
    LogDedup* window = dedup != nullptr ? dedup->locked(&lock) : nullptr;
    static const ProcessOptions kOptions;
    code = topic == Topic::kOrders
               ? decode_order_records(bytes, size, first_offset, end, static_cast<size_t>(max_batch_bytes), window,
                                      kOptions, &out, &error)
               : decode_reject_records(bytes, size, first_offset, end, static_cast<size_t>(max_batch_bytes), window,
                                       &out, &error);
  }
  if (code != Code::kOk) raise_records_error(error);
  return PyDecodedRecords(std::move(out));
}

constexpr int64_t kDefaultMaxBatchBytes = 64 << 20;

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Keystone Ingest native core: decode, validate, dedup and Arrow-encode OrderBatch bytes.";
  m.attr("__version__") = KEYSTONE_VERSION;

  py::class_<ArrowBatch>(m, "ArrowBatch",
                         "One Arrow record batch of a result (or, from schema(), only its schema), exported "
                         "through the Arrow PyCapsule protocol: pyarrow.record_batch(x) takes it without copying.")
      .def_property_readonly("name", &ArrowBatch::name)
      .def_property_readonly("num_rows", &ArrowBatch::num_rows)
      .def("__len__", &ArrowBatch::num_rows)
      .def("__arrow_c_schema__", &ArrowBatch::c_schema)
      .def("__arrow_c_array__", &ArrowBatch::c_array, py::arg("requested_schema") = py::none())
      .def("__repr__", [](const ArrowBatch& b) {
        return "<ArrowBatch " + b.name() + " rows=" + std::to_string(b.num_rows()) + ">";
      });

  py::class_<PyBatchResult>(m, "BatchResult",
                            "What Core.process made of one batch: counts, the four Bronze tables, the spans of the "
                            "accepted orders in the input and the rejected orders.")
      .def_property_readonly("batch_id", [](const PyBatchResult& r) { return r.output().batch_id; })
      .def_property_readonly("source", [](const PyBatchResult& r) { return r.output().source; })
      .def_property_readonly("accepted", [](const PyBatchResult& r) { return r.output().accepted; })
      .def_property_readonly("duplicates", [](const PyBatchResult& r) { return r.output().duplicates; })
      .def_property_readonly("rejected", [](const PyBatchResult& r) { return r.output().rejected; })
      .def_property_readonly("orders", [](const PyBatchResult& r) { return r.table(TableId::kOrders); })
      .def_property_readonly("order_items", [](const PyBatchResult& r) { return r.table(TableId::kOrderItems); })
      .def_property_readonly("order_payments", [](const PyBatchResult& r) { return r.table(TableId::kOrderPayments); })
      .def_property_readonly("customers", [](const PyBatchResult& r) { return r.table(TableId::kCustomers); })
      .def_property_readonly("order_spans", [](const PyBatchResult& r) { return r.table(TableId::kOrderSpans); })
      .def_property_readonly("rejects", [](const PyBatchResult& r) { return r.table(TableId::kRejects); })
      .def("table", &PyBatchResult::table_named, py::arg("name"))
      .def("errors", &PyBatchResult::errors, py::arg("limit") = py::none())
      .def("__repr__", &PyBatchResult::repr);

  py::class_<PyCore>(m, "Core",
                     "Decoder, validator, dedup window and Arrow encoder for OrderBatch bytes. Thread-safe: "
                     "process() releases the GIL and may run on several threads; only the dedup window is "
                     "shared, locked for the dedup stage alone.")
      .def(py::init<int64_t, double, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t,
                    int32_t, bool>(),
           py::kw_only(), py::arg("dedup_max_keys") = 1000000, py::arg("dedup_max_age_s") = 3600.0,
           py::arg("max_orders_per_batch") = 100000, py::arg("max_items_per_order") = 1000,
           py::arg("max_payments_per_order") = 1000, py::arg("max_batch_id_bytes") = 128,
           py::arg("max_source_bytes") = 128, py::arg("max_event_id_bytes") = 128, py::arg("max_id_bytes") = 64,
           py::arg("max_text_bytes") = 256, py::arg("min_year") = 2000, py::arg("max_year") = 2100,
           py::arg("bronze_tables") = true)
      .def("process", &PyCore::process, py::arg("data"), py::kw_only(), py::arg("now_ms") = py::none())
      .def("forget", &PyCore::forget, py::arg("result"))
      .def_property_readonly("dedup_size", &PyCore::dedup_size)
      .def_property_readonly("dedup_memory_bytes", &PyCore::dedup_memory_bytes)
      .def_property_readonly("dedup_bytes_per_key", &PyCore::dedup_bytes_per_key);

  py::class_<PyRecordBatchBuilder>(
      m, "RecordBatchBuilder",
      "A Kafka v2 record batch for one topic-partition, built from OrderBatch requests; aiokafka's send_batch() "
      "takes it as a batch builder.")
      .def(py::init<const std::string&, int, int64_t>(), py::arg("codec"), py::arg("level"), py::arg("max_bytes"))
      .def("append_orders", &PyRecordBatchBuilder::append_orders, py::arg("result"), py::arg("raw"),
           py::arg("partition"), py::arg("partitions"), py::arg("start"), py::arg("timestamp_ms"), py::arg("headers"))
      .def("append_rejects", &PyRecordBatchBuilder::append_rejects, py::arg("result"), py::arg("raw"), py::arg("start"),
           py::arg("timestamp_ms"), py::arg("headers"))
      .def("close", &PyRecordBatchBuilder::close)
      .def("closed", &PyRecordBatchBuilder::closed)
      .def("record_count", &PyRecordBatchBuilder::record_count)
      .def("size", &PyRecordBatchBuilder::size)
      .def("_set_producer_state", &PyRecordBatchBuilder::set_producer_state, py::arg("producer_id"),
           py::arg("producer_epoch"), py::arg("base_sequence"))
      .def("_build", &PyRecordBatchBuilder::build);

  py::class_<PyLogDedup>(
      m, "LogDedup",
      "Dedup over one Kafka partition's log: a record at offset o repeats key k iff k's previous occurrence o' "
      "has o - window_records <= o' < o and its timestamp is at most window_ms older. Decisions depend on the "
      "log alone, so re-reading the same offsets (after reset()) decides the same.")
      .def(py::init<int64_t, int64_t>(), py::arg("window_records"), py::arg("window_ms"))
      .def("reset", &PyLogDedup::reset)
      .def("__len__", &PyLogDedup::size)
      .def_property_readonly("last_offset", &PyLogDedup::last_offset)
      .def_property_readonly("window_records", &PyLogDedup::window_records)
      .def_property_readonly("window_ms", &PyLogDedup::window_ms);

  py::class_<PyDecodedRecords>(m, "DecodedRecords",
                               "What decode_order_records or decode_reject_records made of one fetch of one "
                               "topic-partition: offsets, counts and Bronze's Arrow tables.")
      .def_property_readonly("next_offset", [](const PyDecodedRecords& r) { return r.output().next_offset; })
      .def_property_readonly("consumed", [](const PyDecodedRecords& r) { return r.output().consumed; })
      .def_property_readonly("records", [](const PyDecodedRecords& r) { return r.output().records; })
      .def_property_readonly("duplicates", [](const PyDecodedRecords& r) { return r.output().duplicates; })
      .def_property_readonly("orders", [](const PyDecodedRecords& r) { return r.output().orders; })
      .def_property_readonly("quarantined", [](const PyDecodedRecords& r) { return r.output().quarantined; })
      .def_property_readonly("max_timestamp_ms",
                             [](const PyDecodedRecords& r) -> std::optional<int64_t> {
                               if (r.output().records == 0) return std::nullopt;
                               return r.output().max_timestamp_ms;
                             })
      .def_property_readonly("last_offset",
                             [](const PyDecodedRecords& r) -> std::optional<int64_t> {
                               if (r.output().records == 0) return std::nullopt;
                               return r.output().last_offset;
                             })
      .def_property_readonly("tables", &PyDecodedRecords::tables)
      .def_property_readonly("child_counts", &PyDecodedRecords::child_counts)
      .def("__repr__", &PyDecodedRecords::repr);

  m.def(
      "decode_order_records",
      [](const py::buffer& data, int64_t first_offset, std::optional<int64_t> end_offset, PyLogDedup* dedup,
         int64_t max_batch_bytes) {
        return decode_records(Topic::kOrders, data, first_offset, end_offset, dedup, max_batch_bytes);
      },
      py::arg("data"), py::kw_only(), py::arg("first_offset"), py::arg("end_offset") = py::none(),
      py::arg("dedup").none(true), py::arg("max_batch_bytes") = kDefaultMaxBatchBytes);
  m.def(
      "decode_reject_records",
      [](const py::buffer& data, int64_t first_offset, std::optional<int64_t> end_offset, PyLogDedup* dedup,
         int64_t max_batch_bytes) {
        return decode_records(Topic::kRejects, data, first_offset, end_offset, dedup, max_batch_bytes);
      },
      py::arg("data"), py::kw_only(), py::arg("first_offset"), py::arg("end_offset") = py::none(),
      py::arg("dedup").none(true), py::arg("max_batch_bytes") = kDefaultMaxBatchBytes);

  m.def(
      "partition_counts",
      [](const PyBatchResult& result, int32_t partitions) {
        if (partitions < 1) throw py::value_error("partitions must be positive");
        return keystone::partition_counts(result.output(), partitions);
      },
      py::arg("result"), py::arg("partitions"));

  m.def(
      "batch_id_of",
      [](const py::buffer& data) -> std::optional<std::string> {
        py::buffer_info info = contiguous_bytes(data, "batch_id_of");
        const auto* bytes = static_cast<const uint8_t*>(info.ptr);
        Span id;
        if (!peek_batch_id(bytes, static_cast<size_t>(info.size), &id) || id.length == 0) return std::nullopt;
        return std::string(reinterpret_cast<const char*>(bytes) + id.offset, id.length);
      },
      py::arg("data"));
  m.def(
      "schema",
      [](const std::string& name) {
        const TableId id = table_by_name(name.c_str());
        if (id == TableId::kCount_) throw py::key_error("no table named " + name);
        return ArrowBatch(id, nullptr);
      },
      py::arg("table"));
  m.def("reasons", [] {
    std::vector<std::pair<std::string, std::string>> out;
    for (size_t i = 0; i < static_cast<size_t>(Reason::kCount_); ++i) {
      out.emplace_back(reason_name(static_cast<Reason>(i)), reason_description(static_cast<Reason>(i)));
    }
    return out;
  });
  m.def("batch_errors", [] {
    std::vector<std::pair<std::string, std::string>> out;
    for (size_t i = 1; i <= static_cast<size_t>(kLastBatchCode); ++i) {
      out.emplace_back(code_name(static_cast<Code>(i)), code_description(static_cast<Code>(i)));
    }
    return out;
  });
}
