# Everything runs from the virtualenv in .venv, created and filled here from
# the pinned versions in .ci/constraints.txt. Nothing needs installing by hand.
#
#   make test      build, then run every test (C++ under sanitizers, Python suite)
#   make demo      the main job end to end: server, 200,000 orders, what landed in Kafka and Bronze
#   make bench     micro-benchmarks per stage, then the end-to-end harness against the pure-Python reference server
#   make bench-overload  4 against 40 streams at a 400 MiB memory limit: throughput and peak RSS
#   make fuzz      libFuzzer on the native pipeline, the Kafka record batch reader and the Bronze decoder, then
#                  atheris on the Python request path, each FUZZ_SECONDS: make fuzz FUZZ_SECONDS=600
#   make soak      10 minutes of load with broker outages and server restarts: make soak SOAK_SECONDS=120
#   make lint      ruff (lint, format) and mypy on the Python, clang-format and clang-tidy on native/
#   make format    rewrites the sources in the formatters' style
#   make docs      regenerates the flag reference and the Bronze columns in docs/ from the code

PYTHON        ?= python3.11
VENV          := .venv
PY            := $(VENV)/bin/python
PIP           := $(PY) -m pip --disable-pip-version-check -q
CONSTRAINTS   := .ci/constraints.txt
BUILD_DEPS    := scikit-build-core pybind11 grpcio-tools cmake ninja
FUZZ_SECONDS  ?= 60
JOBS          ?= $(shell nproc)
# Apache Kafka's runtime classpath, resolved from Maven Central by dev/kafka/pom.xml.
KAFKA_POM     := dev/kafka/pom.xml
KAFKA_LIBS    := .cache/kafka/libs
export KEYSTONE_KAFKA_LIBS := $(CURDIR)/$(KAFKA_LIBS)
CLANGXX       ?= clang++-14

SOURCES := $(shell find native proto server client dev -type f \( -name '*.cc' -o -name '*.h' -o -name '*.cpp' \
             -o -name '*.py' -o -name '*.pyi' -o -name '*.proto' -o -name 'CMakeLists.txt' \) 2>/dev/null)

.PHONY: install native-deps kafka java-check test test-native test-python test-sanitize demo soak bench bench-overload fuzz fuzz-python lint lint-tools format docs clean lock

$(PY):
	$(PYTHON) -m venv $(VENV)

# Build requirements go in first: the package builds without isolation so the
# CMake tree in build/ is reused and rebuilds are incremental.
$(VENV)/.deps: $(CONSTRAINTS) pyproject.toml | $(PY) native-deps
	$(PIP) install -c $(CONSTRAINTS) pip
	$(PIP) install -c $(CONSTRAINTS) $(BUILD_DEPS)
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation ".[test]"
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES) CMakeLists.txt pyproject.toml
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation --no-deps .
	touch $@

install: $(VENV)/.installed

# The libraries the native core links for Kafka's record batches: the zstd,
# lz4, snappy and zlib codecs and ISA-L's CRC32C. Installed from Debian's
# packages when a header is missing and we may (root); otherwise named.
NATIVE_DEPS := zstd.h:libzstd-dev lz4frame.h:liblz4-dev snappy.h:libsnappy-dev zlib.h:zlib1g-dev isa-l/crc.h:libisal-dev
native-deps:
	@missing=$$(for d in $(NATIVE_DEPS); do [ -f /usr/include/$${d%%:*} ] || echo $${d#*:}; done); \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    else echo "make: the native core needs the development files of $$missing (Debian package names)" >&2; exit 1; fi; \
	fi

# The broker's jars: kafka_2.13 and its runtime dependencies plus a log4j2
# backend, into an ignored cache folder (replaced whole, so a version change
# leaves no stale jar on the classpath). Maven keeps its own copy in ~/.m2.
kafka: $(KAFKA_LIBS)/.complete

$(KAFKA_LIBS)/.complete: $(KAFKA_POM) | java-check
	rm -rf $(KAFKA_LIBS).tmp
	mvn -q -B -Dstyle.color=never -f $(KAFKA_POM) dependency:copy-dependencies -DincludeScope=runtime \
	    -DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS).tmp
	rm -rf $(KAFKA_LIBS) && mv $(KAFKA_LIBS).tmp $(KAFKA_LIBS)
	touch $@

java-check:
	@command -v java >/dev/null || { echo "make: Java 17 or newer is needed to run Apache Kafka (Debian: apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); [ "$${v:-0}" -ge 17 ] || \
	    { echo "make: java is version $$v; Apache Kafka needs Java 17 or newer" >&2; exit 1; }
	@command -v mvn >/dev/null || { echo "make: Maven is needed to fetch Apache Kafka from Maven Central (Debian: apt-get install maven)" >&2; exit 1; }

test: test-native test-python

test-python: install kafka
	$(PY) -m pytest

# The C++ unit tests, built with AddressSanitizer and UndefinedBehaviorSanitizer.
test-native: $(VENV)/.deps
	$(VENV)/bin/cmake -S native -B build/native-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	    -DKEYSTONE_BUILD_TESTS=ON -DKEYSTONE_SANITIZE=ON >/dev/null
	$(VENV)/bin/cmake --build build/native-asan -j $(JOBS)
	cd build/native-asan && ../../$(VENV)/bin/ctest --output-on-failure

# libFuzzer needs clang; Debian's clang-14 is installed when it is missing
# (the machines here run as root). FUZZ_SECONDS bounds the run.
fuzz: install
	@command -v $(CLANGXX) >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 libclang-rt-14-dev >/dev/null; }
	$(VENV)/bin/cmake -S native -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DCMAKE_CXX_COMPILER=$(CLANGXX) -DKEYSTONE_BUILD_FUZZ=ON >/dev/null
	$(VENV)/bin/cmake --build build/fuzz -j $(JOBS) --target fuzz_process_batch fuzz_read_records fuzz_bronze_decode
	$(PY) native/fuzz/make_corpus.py build/fuzz/seed build/fuzz/records-seed
	mkdir -p build/fuzz/corpus build/fuzz/records-corpus build/fuzz/bronze-corpus build/fuzz/crashes
	build/fuzz/fuzz_process_batch -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/crashes/ build/fuzz/corpus build/fuzz/seed
	build/fuzz/fuzz_read_records -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/crashes/records- build/fuzz/records-corpus build/fuzz/records-seed
	build/fuzz/fuzz_bronze_decode -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/crashes/bronze- build/fuzz/bronze-corpus build/fuzz/records-seed
	$(MAKE) fuzz-python

# Atheris on the whole Python request path (gRPC, service, core, Kafka on a
# development broker), from the same seed batches. Crashes land in build/fuzz/py-crashes/.
fuzz-python: install kafka
	$(PY) native/fuzz/make_corpus.py build/fuzz/seed
	mkdir -p build/fuzz/py-corpus build/fuzz/py-crashes
	$(PY) tests/fuzz/fuzz_request_path.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -rss_limit_mb=4096 \
	    -artifact_prefix=build/fuzz/py-crashes/ build/fuzz/py-corpus build/fuzz/seed

# The Python suite of the core against an ASan+UBSan build of the extension,
# installed into build/asan-site and put first on the path.
ASAN_RUNTIME = $(shell gcc -print-file-name=libasan.so):$(shell gcc -print-file-name=libubsan.so)
test-sanitize: $(VENV)/.deps
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation --no-deps --upgrade --target build/asan-site \
	    -C build-dir=build/asan -C cmake.build-type=Debug -C install.strip=false \
	    -C cmake.define.KEYSTONE_SANITIZE=ON .
	LD_PRELOAD=$(ASAN_RUNTIME) ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
	    PYTHONPATH=build/asan-site $(PY) -m pytest tests/core -p no:cacheprovider -q

# The style and type checks CI runs. Debian's clang-format and clang-tidy 14
# are installed when missing (the machines here run as root), like clang for make fuzz.
CLANG_TOOLS := clang-format-14 clang-tidy-14
lint-tools:
	@command -v clang-tidy-14 >/dev/null && command -v clang-format-14 >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLANG_TOOLS) >/dev/null; }

lint: install lint-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	native/lint.sh $(VENV)/bin/cmake

format: $(VENV)/.deps lint-tools
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	find native benchmarks/native \( -name '*.cc' -o -name '*.h' -o -name '*.cpp' \) -exec clang-format-14 -i {} +

# docs/configuration.md (from the CLI's parser) and the Bronze columns of
# docs/data-contract.md are generated; a test fails when one is stale.
docs: install
	$(PY) -m keystone_ingest.dev.docgen docs

# Starts the server (embedded Apache Kafka and Bronze in data/demo), streams 200,000
# orders, shows what landed in Kafka and Bronze; exits non-zero on a mismatch.
demo: install kafka
	$(PY) -m keystone_ingest.dev.demo

# Sustained load with random broker outages and server restarts, then the
# verification of the reliability tests and the server's RSS over time.
SOAK_SECONDS ?= 600
soak: install kafka
	$(PY) tests/soak.py --seconds $(SOAK_SECONDS)

# The per-stage micro-benchmarks (pytest-benchmark), then the end-to-end
# harness: broker, real server, pure-Python reference server and load client as
# separate processes; table, build/bench/results.json and PNG plots; then the
# py-spy profile of the server per stage (build/bench/profile.json). About 7
# minutes; BENCH_ARGS passes flags to the harness (python -m benchmarks.harness --help),
# e.g. make bench BENCH_ARGS=--quick.
BENCH_ARGS ?=
bench: install kafka
	$(PY) -m pytest benchmarks -p no:randomly --benchmark-only --benchmark-columns=median,iqr,ops \
	    --benchmark-sort=name
	$(PY) -m benchmarks.harness $(BENCH_ARGS)
	$(PY) -m benchmarks.profile

# Overload against a memory limit: the real server with --memory-limit-bytes
# 400 MiB, 4 streams against 40 (ten times the batches offered), 16 batches in
# flight each, three runs of each; throughput, ack latency and peak RSS per run
# in build/bench-overload/results.json. About 2 minutes.
bench-overload: install kafka
	$(PY) -m benchmarks.harness --servers real --server-arg=--memory-limit-bytes=419430400 --max-in-flight 16 \
	    --repeats 1 --fractions= --batch-sizes= --streams-sweep 4,40,4,40,4,40 --sweep-duration 8 --sweep-warmup 2 \
	    --out-dir build/bench-overload

# Re-resolves every dependency to its newest allowed version and writes the
# exact versions to $(CONSTRAINTS). Run after changing pyproject.toml.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip
	build/lock-venv/bin/pip install -q $(BUILD_DEPS)
	build/lock-venv/bin/pip install -q --no-build-isolation ".[test]"
	{ echo "# Exact versions the Makefile installs into .venv (build, runtime and test)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  build/lock-venv/bin/pip freeze --all --exclude keystone-ingest --exclude setuptools --exclude wheel; \
	} > $(CONSTRAINTS)
	rm -rf build/lock-venv

clean:
	rm -rf build $(VENV) .cache .pytest_cache .hypothesis .benchmarks
