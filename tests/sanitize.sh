#!/usr/bin/env bash
# Builds the C++ tests under AddressSanitizer+UBSan and under ThreadSanitizer and runs them
# (the queue, scheduler and stats are the concurrency code, and the native gRPC frontend's
# reactors where gRPC is found). Under TSan the gRPC tests run with their own TSAN_OPTIONS
# (CMakeLists.txt: the system gRPC is not instrumented; tests/tsan.supp says what is suppressed).
set -euo pipefail
cd "$(dirname "$0")/.."
for san in "address,undefined" "thread"; do
  dir="build/san-${san//,/-}"
  cmake -S . -B "$dir" -G Ninja -DINFERLINE_BUILD_TESTS=ON -DINFERLINE_BUILD_PYTHON=OFF \
        -DINFERLINE_WITH_CUDA=OFF -DINFERLINE_SANITIZE="$san" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$dir" -j2
  echo "== C++ tests under -fsanitize=$san"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir "$dir" --output-on-failure -j2
done
