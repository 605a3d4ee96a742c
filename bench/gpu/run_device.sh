#!/usr/bin/env bash
# The device check for the CUDA kernels (issue 5, item 4; first version: what exists so far).
# Run it on the GPU machine (H200, sm_90, no network) from the repository root:
#
#   bash bench/gpu/run_device.sh          # results under $OUT (else build/device-out)
#
# Steps, each echoed with the elapsed time, everything teed to $OUT/log:
#   1. environment: nvidia-smi, nvcc, cmake, compilers           -> $OUT/env.txt
#   2. CMake build for sm_90 (+PTX): test_kernels_cuda, bench_kernels (build/gpu)
#   3. GPU kernel tests through ctest, INFERLINE_REQUIRE_GPU=1 (no device = failure, not a
#      skip)                                                       -> $OUT/ctest_kernels.xml
#   4. bench_kernels: each kernel's bandwidth against a D2D cudaMemcpy of the same run, with a
#      bitwise check against the CPU twin                         -> $OUT/bench_kernels.txt
#   5. pip install --no-build-isolation --no-deps . and import inferline._core (only if at most
#      300 s have passed)                                          -> $OUT/pip.txt
#   6. a short table: step results, then the bench table          -> $OUT/summary.txt
# A failing step does not stop the later ones; the exit status is non-zero if any failed.
# Budget: about 3-4 minutes on 16 cores; every step has a timeout so the whole stays < 8 min.
#
# GoogleTest: the machine may have none and cannot download it. The script uses, in order,
# $GTEST_SRC, .devdeps/googletest, an installed GTest package, /usr/src/googletest. To bring a
# source tree from a development machine:
#   mkdir -p .devdeps && cp -r /usr/src/googletest .devdeps/ && echo /.devdeps/ >> .git/info/exclude
# and name .devdeps in the device tool's `carry`. Without any, step 3 is skipped (and reported);
# the bench's check= column still compares GPU and CPU twin bit for bit.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/build/device-out}"
mkdir -p "$OUT"
BUILD=build/gpu
START=$(date +%s)
JOBS=$(nproc 2>/dev/null || echo 8)

step() { echo; echo "== [$(( $(date +%s) - START ))s] $*"; }
elapsed() { echo $(( $(date +%s) - START )); }

find_nvcc() {
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
  for p in /usr/local/cuda/bin/nvcc /usr/local/cuda-13.0/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  return 1
}

# Prints the CMake arguments that select GoogleTest, or "none".
gtest_args() {
  if [ -n "${GTEST_SRC:-}" ] && [ -d "$GTEST_SRC" ]; then echo "-DINFERLINE_GTEST_SOURCE_DIR=$GTEST_SRC"; return; fi
  if [ -d .devdeps/googletest ]; then echo "-DINFERLINE_GTEST_SOURCE_DIR=$PWD/.devdeps/googletest"; return; fi
  for d in /usr/lib/x86_64-linux-gnu/cmake/GTest /usr/lib/cmake/GTest /usr/local/lib/cmake/GTest /usr/local/lib64/cmake/GTest; do
    [ -d "$d" ] && { echo ""; return; }
  done
  if [ -d /usr/src/googletest ]; then echo "-DINFERLINE_GTEST_SOURCE_DIR=/usr/src/googletest"; return; fi
  echo none
}

# configure TESTS(ON|OFF) GTEST_ARG: the CUDA build of the kernels, their tests and the bench.
configure() {
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  # CMAKE_POLICY_VERSION_MINIMUM: an old googletest source tree asks for CMake < 3.10.
  timeout 120 cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$NVCC" -DINFERLINE_WITH_CUDA=ON -DINFERLINE_REQUIRE_CUDA=ON \
    -DINFERLINE_CUDA_ARCHITECTURES="90-real;90-virtual" -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
    -DINFERLINE_BUILD_PYTHON=OFF -DINFERLINE_BUILD_BENCH=ON -DINFERLINE_BUILD_TESTS="$1" ${2:+"$2"}
}

main() {
  local r_build=SKIP r_tests=SKIP r_bench=SKIP r_pip=SKIP

  step "1. environment"
  {
    nvidia-smi || echo "nvidia-smi failed"
    echo "nvcc: $(find_nvcc || echo none)"
    "$(find_nvcc)" --version || true
    cmake --version | head -1 || true
    ninja --version || echo "no ninja"
    g++ --version | head -1 || true
    python3 --version || true
    echo "cores: $JOBS"
  } 2>&1 | tee "$OUT/env.txt" || true
  NVCC=$(find_nvcc) || { echo "FATAL: nvcc not found"; return 1; }
  export CUDACXX="$NVCC" PATH="$(dirname "$NVCC"):$PATH"
  # cmake / ninja may exist only as Python packages whose scripts are not on PATH.
  local d
  if ! command -v cmake >/dev/null; then
    d=$(python3 -c 'import cmake; print(cmake.CMAKE_BIN_DIR)' 2>/dev/null) && PATH="$d:$PATH" || true
  fi
  if ! command -v ninja >/dev/null; then
    d=$(python3 -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null) && PATH="$d:$PATH" || true
  fi
  command -v cmake >/dev/null || { echo "FATAL: cmake not found"; return 1; }

  step "2. configure + build (sm_90 + PTX) in $BUILD"
  local gt
  gt=$(gtest_args)
  tests=ON
  if [ "$gt" = none ]; then tests=OFF; gt=""; echo "no GoogleTest found: the kernel tests are skipped"; fi
  echo "GoogleTest: ${gt:-installed package} (tests=$tests)"
  if ! configure "$tests" "$gt" && [ $tests = ON ]; then
    echo "configure with tests failed; again without them, so that the bench still runs"
    tests=OFF
    rm -rf "$BUILD"
    configure OFF "" || true
  fi
  targets=(bench_kernels)
  [ $tests = OFF ] || targets+=(test_kernels_cuda)
  if [ -f "$BUILD/CMakeCache.txt" ] && timeout 300 cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"; then
    r_build=PASS
  else
    r_build=FAIL
  fi

  if [ $r_build = PASS ] && [ $tests = ON ]; then
    step "3. GPU kernel tests (ctest, INFERLINE_REQUIRE_GPU=1)"
    if INFERLINE_REQUIRE_GPU=1 timeout 180 ctest --test-dir "$BUILD" -R '^KernelsCuda' --no-tests=error \
         --output-on-failure --output-junit "$OUT/ctest_kernels.xml"; then
      r_tests=PASS
    else
      r_tests=FAIL
    fi
  fi

  if [ $r_build = PASS ]; then
    step "4. bench_kernels"
    if timeout 240 "$BUILD/bench_kernels" | tee "$OUT/bench_kernels.txt"; then r_bench=PASS; else r_bench=FAIL; fi
  fi

  if [ "$(elapsed)" -le 300 ]; then
    step "5. pip install --no-build-isolation --no-deps . ; import inferline._core"
    if timeout 240 python3 -m pip install --no-build-isolation --no-deps . >"$OUT/pip.txt" 2>&1 \
       && (cd /tmp && python3 -c "import inferline._core as c; print('import ok:', c.__file__)") 2>&1 | tee -a "$OUT/pip.txt"; then
      r_pip=PASS
    else
      r_pip=FAIL; tail -30 "$OUT/pip.txt"
    fi
  else
    echo "5. pip install skipped: $(elapsed)s elapsed (> 300 s)"
  fi

  step "6. summary"
  {
    echo "device check, $(elapsed)s: build=$r_build tests=$r_tests bench=$r_bench pip=$r_pip"
    if [ -s "$OUT/bench_kernels.txt" ]; then
      # The bench's own table: everything after its first blank line.
      awk 'seen {print} /^$/ {seen=1}' "$OUT/bench_kernels.txt"
    fi
  } | tee "$OUT/summary.txt"
  [ $r_build = PASS ] && [ $r_tests != FAIL ] && [ $r_bench = PASS ] && [ $r_pip != FAIL ]
}

main "$@" 2>&1 | tee "$OUT/log"
