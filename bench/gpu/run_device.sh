#!/usr/bin/env bash
# The device check (issue 5 item 4, issue 17 item 5): build inferline with CUDA on the GPU machine
# (H200, sm_90, 16 cores, no network), run the GPU tests and the GPU benches, end with one table.
# From the repository root:
#
#   bash bench/gpu/run_device.sh                        # results under $OUT (else build/device-out)
#   INFERLINE_DEVICE_DRYRUN=1 bash bench/gpu/run_device.sh   # here, without a GPU (see below)
#
# Steps, each echoed with the elapsed time and run under its own timeout; a failing step does not
# stop the later ones (a step that needs an earlier one's output is SKIPped without it):
#   1. env       nvidia-smi, nvcc, cmake, compilers, Python packages; a CUDA MPS daemon left running
#                by an earlier call is stopped
#   2. wheels    carried wheels (.whl/, from bench/gpu/fetch_wheels.sh) into $SITE (/tmp/site, put on
#                PYTHONPATH), each only where the machine lacks the package or has an older one
#   3. build     at once, in the background: the CMake build (build/gpu; kernels, core, every C++
#                test, bench_kernels; CUDA for sm_90 + PTX; GoogleTest from .devdeps when carried)
#      pip       `pip install --no-build-isolation --no-deps --target $SITE .` with CUDA ON (the
#                wheel's core links the kernels); then import inferline._core, print cuda_status()
#   4. pytest    tests/python/gpu, INFERLINE_REQUIRE_GPU=1 (while the CMake build may still run)
#                                                                       -> $OUT/pytest_gpu.xml
#   5. ctest     the C++ tests whose names hold Cuda or Gpu, INFERLINE_REQUIRE_GPU=1 (no device =
#                failure, not a skip)                                 -> $OUT/ctest_gpu.xml
#   6. engine    bench/gpu/bench_engine.py (about 2-3 min)  -> $OUT/engine_table.md, $OUT/engine.json
#   7. kernels   bench_kernels (--quick when time is short)             -> $OUT/bench_kernels.txt
#   8. mps       whether nvidia-cuda-mps-control exists and a daemon starts and serves a CUDA
#                client (then it is stopped); nothing depends on it
#   9. summary   one table last: the steps, then the kernel table, then the engine table
#                                                                       -> $OUT/summary.txt
# Everything is teed to $OUT/log; the build logs go to $OUT/build.txt. At most 8 files in $OUT.
# Budget: INFERLINE_DEVICE_LIMIT_S (default 460 s) for the whole; each step's timeout is cut to
# what is left after the time the later steps are given. About 7 minutes on the H200 machine:
# run it with the device tool's timeout_s near 480.
#
# Carried paths: .whl (wheels) and .devdeps (a GoogleTest source tree: without one the C++ tests
# are not built and step 4 is skipped). Prepare them once on a development machine:
#   bash bench/gpu/fetch_wheels.sh
#   mkdir -p .devdeps && cp -r /usr/src/googletest .devdeps/ && echo /.devdeps/ >> .git/info/exclude
#
# Dry run (INFERLINE_DEVICE_DRYRUN=1), on a machine without a GPU: skips nvidia-smi, the CMake GPU
# build, ctest, bench_kernels and MPS; runs the wheel install, the CUDA pip build (nvcc compiles
# here too) into $SITE, tests/python/gpu without INFERLINE_REQUIRE_GPU (they skip), and
# bench_engine.py --device cpu --quick. Use a copy of the tree and a scratch SITE: it builds from
# scratch, and --target never touches the interpreter's own site-packages.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
OUT="${OUT:-$ROOT/build/device-out}"
mkdir -p "$OUT"
DRYRUN="${INFERLINE_DEVICE_DRYRUN:-0}"
SITE="${INFERLINE_SITE:-/tmp/site}"
PY="${PYTHON:-python3}"
LIMIT="${INFERLINE_DEVICE_LIMIT_S:-460}"
BUILD=build/gpu
START=$(date +%s)
JOBS=$(nproc 2>/dev/null || echo 8)
declare -A RESULT NOTE TOOK
T_STEP=$START
STEPS=(env wheels build pip pytest ctest engine kernels mps)

elapsed() { echo $(( $(date +%s) - START )); }
step() { T_STEP=$(date +%s); echo; echo "== [$(elapsed)s] $*"; }
# cap WANT RESERVE: WANT seconds, or fewer so that RESERVE seconds stay for the later steps (0 when
# none are left: the caller skips its step then, since `timeout 0` would mean no limit at all).
cap() { local left=$(( LIMIT - $(elapsed) - $2 )); (( left < $1 )) && echo $(( left > 0 ? left : 0 )) || echo "$1"; }
# record STEP RESULT [NOTE]: the step's result and its seconds since its step line (or since $T0).
record() { RESULT[$1]=$2; NOTE[$1]=${3:-}; TOOK[$1]=$(( $(date +%s) - ${T0:-$T_STEP} )); }

find_nvcc() {
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
  for p in /usr/local/cuda/bin/nvcc /usr/local/cuda-13.0/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  return 1
}

# The CMake arguments that select GoogleTest, or "none".
gtest_args() {
  if [ -n "${GTEST_SRC:-}" ] && [ -d "$GTEST_SRC" ]; then echo "-DINFERLINE_GTEST_SOURCE_DIR=$GTEST_SRC"; return; fi
  if [ -d .devdeps/googletest ]; then echo "-DINFERLINE_GTEST_SOURCE_DIR=$ROOT/.devdeps/googletest"; return; fi
  for d in /usr/lib/x86_64-linux-gnu/cmake/GTest /usr/lib/cmake/GTest /usr/local/lib/cmake/GTest \
           /usr/local/lib64/cmake/GTest; do
    [ -d "$d" ] && { echo ""; return; }
  done
  if [ -d /usr/src/googletest ]; then echo "-DINFERLINE_GTEST_SOURCE_DIR=/usr/src/googletest"; return; fi
  echo none
}

# ---- 1. environment ----------------------------------------------------------------------------
s_env() {
  step "1. environment"
  if [ "$DRYRUN" = 1 ]; then echo "dry run: no nvidia-smi"
  else timeout 20 nvidia-smi || echo "nvidia-smi failed"; fi
  NVCC=$(find_nvcc) || NVCC=""
  echo "nvcc: ${NVCC:-none}"; [ -n "$NVCC" ] && "$NVCC" --version | tail -2
  if [ -n "$NVCC" ]; then CUDACXX=$NVCC; PATH="$(dirname "$NVCC"):$PATH"; export CUDACXX PATH; fi
  # cmake / ninja may exist only as Python packages whose scripts are not on PATH.
  local d
  command -v cmake >/dev/null || { d=$("$PY" -c 'import cmake; print(cmake.CMAKE_BIN_DIR)' 2>/dev/null) \
                                    && PATH="$d:$PATH"; }
  command -v ninja >/dev/null || { d=$("$PY" -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null) && PATH="$d:$PATH"; }
  cmake --version | head -1; ninja --version || echo "no ninja"; g++ --version | head -1
  echo "python: $(command -v "$PY") $("$PY" --version 2>&1); cores: $JOBS"
  local pkgs='torch|numpy|cupy|protobuf|grpcio|pytest|pybind11|scikit.build|onnx|pyyaml|aiohttp|fsspec|jsonschema'
  "$PY" -m pip list 2>/dev/null | grep -iE "^($pkgs|typing.ext|attrs) " || true
  if [ "$DRYRUN" != 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
    echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe timeout 5 nvidia-cuda-mps-control >/dev/null 2>&1 \
      && echo "stopped an MPS daemon left by an earlier call" || true
  fi
  if [ -z "$NVCC" ]; then record env FAIL "no nvcc"
  elif ! command -v cmake >/dev/null; then record env FAIL "no cmake"
  else record env PASS "$("$NVCC" --version | grep -o 'release [0-9.]*'), $("$PY" --version 2>&1)"; fi
}

# ---- 2. carried wheels -------------------------------------------------------------------------
s_wheels() {
  step "2. carried wheels -> $SITE"
  mkdir -p "$SITE"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if ! ls .whl/*.whl >/dev/null 2>&1; then record wheels SKIP "no .whl/ carried"; return; fi
  # A wheel goes in only where the machine lacks its package or has an older version.
  local want
  want=$(timeout 30 "$PY" - .whl/*.whl <<'EOF'
import re, sys
from importlib import metadata
def key(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])
for path in sys.argv[1:]:
    name, version = path.rsplit("/", 1)[-1].split("-")[:2]
    try:
        have = metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        have = None
    if have is None or key(have) < key(version):
        print(path)
    else:
        print(f"keep {name} {have} (carried {version})", file=sys.stderr)
EOF
  ) || { record wheels FAIL "could not compare versions"; return; }
  if [ -z "$want" ]; then record wheels PASS "all present already"; return; fi
  echo "installing: $want"
  # shellcheck disable=SC2086  # one path per word
  if timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target "$SITE" $want; then
    record wheels PASS "$(echo "$want" | wc -l) wheel(s)"
  else
    record wheels FAIL "pip install of the carried wheels failed"
  fi
}

# ---- 3. builds ---------------------------------------------------------------------------------
# The CMake build of kernels, core, C++ tests and bench_kernels, run in the background.
cmake_build() {
  local gt tests=ON gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  gt=$(gtest_args)
  if [ "$gt" = none ]; then tests=OFF; gt=""; echo "no GoogleTest found: the C++ tests are not built"; fi
  echo "GoogleTest: ${gt:-installed package} (tests=$tests)"
  # CMAKE_POLICY_VERSION_MINIMUM: an old googletest source tree asks for CMake < 3.10.
  timeout 120 cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$NVCC" -DINFERLINE_WITH_CUDA=ON -DINFERLINE_REQUIRE_CUDA=ON \
    -DINFERLINE_CUDA_ARCHITECTURES="90-real;90-virtual" -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
    -DINFERLINE_BUILD_PYTHON=OFF -DINFERLINE_BUILD_BENCH=ON -DINFERLINE_BUILD_TESTS=$tests ${gt:+"$gt"} || return 1
  echo "tests=$tests" > "$BUILD/device-tests"
  timeout "$1" cmake --build "$BUILD" -j "$JOBS"
}

s_build_start() {
  step "3. CMake build in $BUILD (background), pip build of the wheel (foreground)"
  if [ "$DRYRUN" = 1 ]; then record build SKIP "dry run"; return; fi
  if [ -z "${NVCC:-}" ]; then record build SKIP "no nvcc"; return; fi
  rm -f "$BUILD/device-tests"
  BUILD_T0=$(date +%s)
  ( cmake_build "$(cap 200 150)" > /tmp/cmake_build.txt 2>&1; echo $? > /tmp/cmake_build.rc ) &
  CMAKE_PID=$!
}

s_build_wait() {
  [ -n "${CMAKE_PID:-}" ] || return
  step "3. waiting for the CMake build"
  wait "$CMAKE_PID"
  local rc; rc=$(cat /tmp/cmake_build.rc 2>/dev/null || echo 1)
  { echo "==== CMake build (rc $rc)"; cat /tmp/cmake_build.txt; } >> "$OUT/build.txt"
  local T0=$BUILD_T0
  if [ "$rc" = 0 ]; then record build PASS "$(cat "$BUILD/device-tests" 2>/dev/null), $(nproc) cores"
  else
    record build FAIL "rc $rc; see build.txt"
    grep -E 'error|Error|FAILED' /tmp/cmake_build.txt | head -20; tail -15 /tmp/cmake_build.txt
  fi
}

s_pip() {
  step "3. pip install --no-build-isolation --no-deps --target $SITE . (CUDA ON)"
  if [ -z "${NVCC:-}" ]; then record pip SKIP "no nvcc"; return; fi
  local t; t=$(cap 240 150)
  # CMAKE_ARGS (split like a shell line; the ';' stays inside one argument) reaches the wheel's
  # CMake configure; the build dir is kept apart from a developer's editable build and is reused
  # while the machine stays warm.
  local args="-DINFERLINE_WITH_CUDA=ON -DINFERLINE_REQUIRE_CUDA=ON -DCMAKE_CUDA_COMPILER=$NVCC"
  args+=" -DINFERLINE_CUDA_ARCHITECTURES=90-real;90-virtual"
  echo "CMAKE_ARGS=$args"
  if CMAKE_ARGS=$args CMAKE_BUILD_PARALLEL_LEVEL=$JOBS timeout "$t" "$PY" -m pip install -v --no-build-isolation \
       --no-deps --no-index --upgrade --target "$SITE" -C "build-dir=build/device/{wheel_tag}" . \
       > /tmp/pip_build.txt 2>&1; then
    { echo "==== pip build"; cat /tmp/pip_build.txt; } >> "$OUT/build.txt"
    local status
    if status=$(cd /tmp && timeout 60 "$PY" -c "import inferline._core as c; print(c.__file__)
s = c.cuda_status() if hasattr(c, 'cuda_status') else {}
print('cuda_status: built={} devices={} {}'.format(s.get('built'), s.get('devices'), s.get('reason', '')[:70]))" 2>&1)
    then
      echo "$status"
      record pip PASS "$(echo "$status" | tail -1)"
    else
      echo "$status"; record pip FAIL "import failed: $(echo "$status" | tail -1 | cut -c1-100)"
    fi
  else
    { echo "==== pip build (FAILED)"; cat /tmp/pip_build.txt; } >> "$OUT/build.txt"
    grep -E 'error|Error' /tmp/pip_build.txt | head -20; tail -20 /tmp/pip_build.txt
    record pip FAIL "build failed or timed out ($t s); see build.txt"
  fi
}

# ---- 4.-5. tests (pytest first: it needs only the wheel) -------------------------------------
s_ctest() {
  step "5. C++ GPU tests (ctest -R 'Cuda|Gpu', INFERLINE_REQUIRE_GPU=1)"
  if [ "$DRYRUN" = 1 ]; then record ctest SKIP "dry run"; return; fi
  if [ "${RESULT[build]:-}" != PASS ]; then record ctest SKIP "no build"; return; fi
  if ! grep -qs tests=ON "$BUILD/device-tests"; then record ctest SKIP "no GoogleTest (carry .devdeps)"; return; fi
  local t; t=$(cap 120 190)
  if (( t < 20 )); then record ctest SKIP "no time left"; return; fi
  if INFERLINE_REQUIRE_GPU=1 timeout "$t" ctest --test-dir "$BUILD" -R 'Cuda|Gpu' --no-tests=error -j 4 \
       --output-on-failure --output-junit "$OUT/ctest_gpu.xml" > /tmp/ctest.txt 2>&1; then
    record ctest PASS "$(grep -oE '[0-9]+% tests passed.*' /tmp/ctest.txt | tail -1)"
  else
    record ctest FAIL "$(grep -oE '[0-9]+% tests passed.*' /tmp/ctest.txt | tail -1)"
  fi
  grep -vE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* Passed' /tmp/ctest.txt | tail -40
}

s_pytest() {
  step "4. Python GPU tests (tests/python/gpu)"
  if [ "${RESULT[pip]:-}" != PASS ]; then record pytest SKIP "no inferline build"; return; fi
  if [ ! -d tests/python/gpu ]; then record pytest SKIP "no tests/python/gpu"; return; fi
  local t req=1; t=$(cap 150 230)
  if (( t < 20 )); then record pytest SKIP "no time left"; return; fi
  [ "$DRYRUN" = 1 ] && req=""
  # -o faulthandler_timeout: a hung test prints its stack before the step's timeout ends it.
  INFERLINE_REQUIRE_GPU=$req timeout "$t" "$PY" -m pytest tests/python/gpu -q -p no:cacheprovider -rfEs \
    -o faulthandler_timeout=90 --junitxml="$OUT/pytest_gpu.xml" > /tmp/pytest.txt 2>&1
  local rc=$? line
  tail -40 /tmp/pytest.txt
  line=$(grep -E '(passed|failed|skipped|error|no tests ran)' /tmp/pytest.txt | tail -1 | tr -d '=' | sed 's/^ *//')
  if [ $rc = 0 ]; then record pytest PASS "$line"; elif [ $rc = 124 ]; then record pytest FAIL "timed out ($t s); $line"
  else record pytest FAIL "rc $rc; $line"; fi
}

# ---- 6.-7. benches -----------------------------------------------------------------------------
s_engine() {
  step "6. bench_engine.py"
  if [ "${RESULT[pip]:-}" != PASS ]; then record engine SKIP "no inferline build"; return; fi
  local t args=(); t=$(cap 290 45)
  if (( t < 60 )); then record engine SKIP "no time left"; return; fi
  [ "$DRYRUN" = 1 ] && args=(--device cpu --quick)
  export OUT  # bench_engine.py writes engine_table.md there
  (cd /tmp && timeout "$t" "$PY" "$ROOT/bench/gpu/bench_engine.py" "${args[@]}" --total-s $(( t - 10 )) \
     --json "$OUT/engine.json")
  local rc=$?
  if [ $rc = 0 ]; then record engine PASS "every section ran"
  elif [ $rc = 124 ]; then record engine FAIL "timed out ($t s)"
  else record engine FAIL "rc $rc: FAIL rows in the engine table"; fi
}

s_kernels() {
  step "7. bench_kernels"
  if [ "$DRYRUN" = 1 ]; then record kernels SKIP "dry run"; return; fi
  if [ ! -x "$BUILD/bench_kernels" ]; then record kernels SKIP "not built"; return; fi
  local t args=(); t=$(cap 150 20)
  if (( t < 15 )); then record kernels SKIP "no time left"; return; fi
  (( t < 100 )) && args=(--quick)
  if timeout "$t" "$BUILD/bench_kernels" "${args[@]}" > "$OUT/bench_kernels.txt" 2>&1; then
    record kernels PASS "${args[*]:-full}"
  else
    record kernels FAIL "rc $? (${args[*]:-full}, $t s)"
  fi
  cat "$OUT/bench_kernels.txt"
}

# ---- 8. MPS ------------------------------------------------------------------------------------
s_mps() {
  step "8. CUDA MPS: is it there, does a daemon start?"
  if [ "$DRYRUN" = 1 ]; then record mps SKIP "dry run"; return; fi
  if ! command -v nvidia-cuda-mps-control >/dev/null; then
    record mps PASS "no: nvidia-cuda-mps-control not installed"; return
  fi
  mkdir -p /tmp/mps-pipe /tmp/mps-log
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  if ! timeout 10 nvidia-cuda-mps-control -d; then
    record mps PASS "no: the daemon did not start"; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; return
  fi
  local client
  client=$(timeout 30 "$PY" -c "import torch; x = torch.ones(1 << 20, device='cuda'); print('client ok', float(x.sum()))" \
           2>&1 | tail -1)
  echo "$client"; echo get_server_list | timeout 5 nvidia-cuda-mps-control || true
  tail -5 /tmp/mps-log/control.log 2>/dev/null
  echo quit | timeout 10 nvidia-cuda-mps-control || true
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  case "$client" in
    "client ok"*) record mps PASS "yes: the daemon started and served a torch client" ;;
    *) record mps PASS "no: daemon started, client failed: $(echo "$client" | cut -c1-80)" ;;
  esac
}

# ---- 9. summary --------------------------------------------------------------------------------
summary() {
  step "9. summary"
  {
    echo "device check, $(elapsed) s$([ "$DRYRUN" = 1 ] && echo ' (DRY RUN, no GPU)')"
    echo
    echo "| step | result | s | notes |"
    echo "|---|---|---|---|"
    local s
    for s in "${STEPS[@]}"; do echo "| $s | ${RESULT[$s]:-SKIP} | ${TOOK[$s]:-} | ${NOTE[$s]:-} |"; done
    if [ -s "$OUT/bench_kernels.txt" ]; then
      echo; echo "bench_kernels:"
      awk 'seen {print} /^$/ {seen=1}' "$OUT/bench_kernels.txt"   # its own table: after its first blank line
    fi
    if [ -s "$OUT/engine_table.md" ]; then echo; echo "bench_engine:"; cat "$OUT/engine_table.md"; fi
    if [ -s "$OUT/mps/engine_table.md" ]; then echo; echo "bench_engine under MPS:"; cat "$OUT/mps/engine_table.md"; fi
  } | tee "$OUT/summary.txt"
  for s in "${STEPS[@]}"; do [ "${RESULT[$s]:-SKIP}" = FAIL ] && return 1; done
  return 0
}

# ---- follow-up (INFERLINE_DEVICE_STEPS=followup): after a full run, on a machine that may be fresh
# p99 at 80% and 50% of the engine's throughput, and the noisy neighbour in one process and across
# two processes, first time-sliced, then again under a CUDA MPS daemon ($OUT/mps/).
s_followup() {
  step "6b. bench_engine.py --sections engine,noisy"
  if [ "${RESULT[pip]:-}" != PASS ]; then record engine SKIP "no inferline build"; return; fi
  export OUT
  local args=(); [ "$DRYRUN" = 1 ] && args=(--device cpu --quick)
  if (cd /tmp && timeout 200 "$PY" "$ROOT/bench/gpu/bench_engine.py" "${args[@]}" --sections engine,noisy \
        --total-s 190 --json "$OUT/engine.json"); then record engine PASS "engine, noisy"
  else record engine FAIL "engine, noisy: see the table"; fi
  step "6c. bench_engine.py --sections noisy under CUDA MPS"
  if [ "$DRYRUN" = 1 ] || ! command -v nvidia-cuda-mps-control >/dev/null; then record mps SKIP "no MPS"; return; fi
  mkdir -p /tmp/mps-pipe /tmp/mps-log "$OUT/mps"
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  if ! timeout 10 nvidia-cuda-mps-control -d; then record mps FAIL "the daemon did not start"; return; fi
  local mps_out="$OUT/mps"
  if (cd /tmp && OUT="$mps_out" timeout 150 "$PY" "$ROOT/bench/gpu/bench_engine.py" --sections noisy \
        --total-s 140 --json "$mps_out/engine.json"); then record mps PASS "noisy under MPS"
  else record mps FAIL "noisy under MPS: see mps/engine_table.md"; fi
  echo quit | timeout 10 nvidia-cuda-mps-control || true
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
}

# ---- variants (INFERLINE_DEVICE_STEPS=variants): the engine section once per set of extra flags in
# INFERLINE_ENGINE_VARIANTS (';'-separated; an empty one is the default), tables in $OUT/vN/.
s_variants() {
  if [ "${RESULT[pip]:-}" != PASS ]; then record engine SKIP "no inferline build"; return; fi
  local i=0 v extra dry=() notes=""
  [ "$DRYRUN" = 1 ] && dry=(--device cpu --quick)
  IFS=';' read -r -a variants <<< "${INFERLINE_ENGINE_VARIANTS:-}"
  for v in "${variants[@]}"; do
    i=$((i + 1))
    step "6v. bench_engine.py --sections engine $v"
    mkdir -p "$OUT/v$i"
    read -r -a extra <<< "$v"
    local vout="$OUT/v$i"
    if (cd /tmp && OUT="$vout" timeout 120 "$PY" "$ROOT/bench/gpu/bench_engine.py" "${dry[@]}" --sections engine \
          "${extra[@]}" --total-s 110); then notes+="v$i ok; "; else notes+="v$i FAIL; "; fi
    echo "variant v$i: ${v:-(default)}" >> "$OUT/variants.txt"
  done
  record engine PASS "$notes"
}

main() {
  : > "$OUT/build.txt"
  if [ "${INFERLINE_DEVICE_STEPS:-all}" = followup ]; then
    s_env; s_wheels; s_pip; s_followup; summary
    return
  fi
  if [ "${INFERLINE_DEVICE_STEPS:-all}" = variants ]; then
    s_env; s_wheels; s_pip; s_variants; summary
    for f in "$OUT"/v*/engine_table.md; do [ -f "$f" ] && { echo; echo "$f"; grep "2 engine" "$f"; }; done
    return
  fi
  s_env
  s_wheels
  s_build_start
  s_pip
  s_pytest        # while the CMake build may still run: functional tests, not timed
  s_build_wait
  s_ctest
  s_engine
  s_kernels
  s_mps
  summary
}

main "$@" 2>&1 | tee "$OUT/log"
