#!/usr/bin/env bash
# Style and static checks of the C++ core, for `make lint` and CI:
#   native/lint.sh CMAKE    (e.g. native/lint.sh .venv/bin/cmake)
# clang-format checks every C++ file under native/ and benchmarks/native/;
# clang-tidy checks native/src, native/bindings and native/tests, the files of
# the compile database. The rules are the repository's .clang-format and
# .clang-tidy. Exits non-zero on any difference or finding. The compile
# database comes from the top-level CMakeLists.txt, as the extension is built,
# so the pybind11 bindings are checked too: pybind11 comes from the Python next
# to CMAKE (the venv's), or $PYTHON.
set -euo pipefail

cmake=${1:?usage: native/lint.sh CMAKE}
cmake=$(command -v "$cmake") || { echo "lint.sh: no cmake at $1" >&2; exit 2; }
[[ $cmake == /* ]] || cmake="$(cd "$(dirname "$cmake")" && pwd)/$(basename "$cmake")"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

clang_format=${CLANG_FORMAT:-clang-format-14}
clang_tidy=${CLANG_TIDY:-clang-tidy-14}
run_clang_tidy=${RUN_CLANG_TIDY:-run-clang-tidy-14}
jobs=${LINT_JOBS:-2}
build=build/lint-all
python=${PYTHON:-$(dirname "$cmake")/python}
[ -x "$python" ] || python=python3
# The venv's ninja sits next to its cmake.
export PATH="$(dirname "$cmake"):$PATH"

for tool in "$clang_format" "$clang_tidy"; do
  command -v "$tool" >/dev/null || {
    echo "lint.sh: $tool is missing (Debian: apt-get install clang-format-14 clang-tidy-14)" >&2
    exit 2
  }
done

mapfile -t format_files < <(find native benchmarks/native -type f \( -name '*.cc' -o -name '*.h' -o -name '*.cpp' \) | sort)
mapfile -t tidy_files < <(find native/src native/bindings native/tests -type f \( -name '*.cc' -o -name '*.cpp' \) | sort)

# Both checks run, so one pass shows everything to fix.
failed=0
if "$clang_format" --dry-run --Werror "${format_files[@]}"; then
  echo "clang-format: ${#format_files[@]} files clean"
else
  echo "clang-format: differences above (make format rewrites them)" >&2
  failed=1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT

pybind11_dir=$("$python" -m pybind11 --cmakedir) || {
  echo "lint.sh: $python has no pybind11, which the bindings' compile commands need (make install)" >&2
  exit 2
}
"$cmake" -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  -DCMAKE_CXX_COMPILER=clang++-14 -DKEYSTONE_BUILD_TESTS=ON -DSKBUILD_PROJECT_VERSION=0.0.0 \
  -Dpybind11_DIR="$pybind11_dir" -DPython_EXECUTABLE="$python" >"$log" 2>&1 || {
  cat "$log" >&2
  exit 2
}
# A file the database lacks would be skipped without a word.
for f in "${tidy_files[@]}"; do
  grep -q "\"file\": \"$root/$f\"" "$build/compile_commands.json" || {
    echo "lint.sh: $f is not in $build/compile_commands.json; is it in a CMakeLists.txt?" >&2
    exit 1
  }
done

# clang-tidy prints "N warnings generated." for the suppressed ones (system and
# pybind11 headers) and run-clang-tidy each command line: the output is shown
# only on failure, without those lines.
status=0
if command -v "$run_clang_tidy" >/dev/null; then
  "$run_clang_tidy" -clang-tidy-binary "$(command -v "$clang_tidy")" -p "$build" -j "$jobs" -quiet \
    "${tidy_files[@]/#/$root/}" >"$log" 2>&1 || status=$?
else
  printf '%s\n' "${tidy_files[@]}" | xargs -P "$jobs" -n 1 "$clang_tidy" -p "$build" --quiet >"$log" 2>&1 || status=$?
fi
if [ "$status" -eq 0 ]; then
  echo "clang-tidy: ${#tidy_files[@]} files clean"
else
  grep -v -e ' warnings generated\.$' -e "^$(command -v "$clang_tidy") " "$log" >&2 || true
  echo "clang-tidy: findings above (rules in .clang-tidy; NOLINT(check) with a reason where a finding is by design)" >&2
  failed=1
fi
exit "$failed"
