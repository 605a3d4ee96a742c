// bench_kernels: bandwidth of the CUDA preprocessing kernels against a device-to-device copy
// measured in the same run, one line per configuration, then a short table.
//
//   bench_kernels            full sizes (1 GiB tabular batches, ~250 MB image batches), ~30 s
//   bench_kernels --quick    1/8 of the sizes
//
// Bandwidth counts bytes read + bytes written by one launch (the stats tables, a few KB, are not
// counted), over the median time of one launch (CUDA events around `iters` back-to-back launches,
// `reps` repetitions). `vs_copy` divides by cudaMemcpyAsync D2D's bandwidth from this run (also
// read + written). The issue's target for the tabular kernel is vs_copy >= 0.80 at large sizes.
// Each configuration also checks its first rows (tabular) / first 2 images against the CPU twin
// bit for bit: check=ok or check=FAIL(<mismatches>).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "inferline/kernels/preprocess_cuda.h"
#include "inferline/preprocess.h"

namespace {

using inferline::DataType;
using inferline::Shape;
using inferline::TensorView;
namespace k = inferline::kernels;

#define CHECK_CUDA(expr)                                                                     \
  do {                                                                                       \
    const cudaError_t e_ = (expr);                                                           \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(2);                                                                          \
    }                                                                                        \
  } while (0)

void CheckOk(const inferline::Status& st, const char* what) {
  if (st.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, st.ToString().c_str());
  std::exit(2);
}

struct Timing {
  double us;  // median time of one launch
};

// Median over `reps` of the mean time of `iters` back-to-back calls of `fn` on `stream`.
template <class F>
Timing Time(F&& fn, cudaStream_t stream, int iters, int reps = 5) {
  for (int i = 0; i < 3; ++i) fn();  // warm-up
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> per;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    for (int i = 0; i < iters; ++i) fn();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    per.push_back(1000.0 * ms / iters);
  }
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  std::sort(per.begin(), per.end());
  return Timing{per[per.size() / 2]};
}

__global__ void CopyKernel(const float4* __restrict__ in, float4* __restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * size_t{256} + threadIdx.x; i < n; i += size_t{gridDim.x} * 256) out[i] = in[i];
}

// A reproducible pattern with NaNs (5%), used for both the device batch and the CPU check.
std::vector<float> Pattern(size_t n) {
  std::vector<float> v(n);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    const uint32_t r = static_cast<uint32_t>(s >> 32);
    v[i] = (r % 20 == 0) ? __builtin_nanf("") : (static_cast<float>(r % 20000) - 10000.0f) / 997.0f;
  }
  return v;
}

// Fills `bytes` of device memory by repeating `host` (whose size must divide nothing in particular).
void FillDevice(void* dev, size_t bytes, const void* host, size_t host_bytes) {
  auto* d = static_cast<unsigned char*>(dev);
  for (size_t at = 0; at < bytes; at += host_bytes) {
    CHECK_CUDA(cudaMemcpy(d + at, host, std::min(host_bytes, bytes - at), cudaMemcpyHostToDevice));
  }
  // A cudaMemcpy from pageable memory can return before its DMA lands, and the timed work runs on
  // a non-blocking stream that does not wait for it.
  CHECK_CUDA(cudaDeviceSynchronize());
}

// Bit mismatches between `count` device outputs and the CPU twin's float32 `cpu` (converted with
// __float2half_rn for FP16).
size_t Mismatches(const void* dev, const std::vector<float>& cpu, size_t count, DataType dt) {
  size_t bad = 0;
  if (dt == DataType::kFloat32) {
    std::vector<float> got(count);
    CHECK_CUDA(cudaMemcpy(got.data(), dev, count * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < count; ++i) bad += std::memcmp(&got[i], &cpu[i], 4) != 0;
  } else {
    std::vector<__half> got(count);
    CHECK_CUDA(cudaMemcpy(got.data(), dev, count * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < count; ++i) bad += __half_as_ushort(got[i]) != __half_as_ushort(__float2half_rn(cpu[i]));
  }
  return bad;
}

struct Row {  // one line of the final table
  std::string name;
  double us, gbps, vs_copy;
  std::string check;
};
std::vector<Row> g_rows;
double g_copy_gbps = 0.0;

void Report(const std::string& name, const std::string& detail, double bytes, Timing t, const std::string& check) {
  const double gbps = bytes / (t.us * 1e3);
  const double ratio = g_copy_gbps > 0 ? gbps / g_copy_gbps : 0.0;
  std::printf("%-22s %s bytes=%.0f us=%.2f GBps=%.1f vs_copy=%.3f check=%s\n", name.c_str(), detail.c_str(),
              bytes, t.us, gbps, ratio, check.c_str());
  std::fflush(stdout);
  g_rows.push_back(Row{name, t.us, gbps, ratio, check});
}

std::string CheckText(size_t bad) { return bad == 0 ? "ok" : "FAIL(" + std::to_string(bad) + ")"; }

void BenchTabular(const char* name, int64_t rows, int64_t f, DataType out_dt, int shift, float* d_in,
                  void* d_out, const std::vector<float>& pattern, cudaStream_t s, int iters) {
  inferline::TabularSpec t;
  for (int64_t j = 0; j < f; ++j) t.mean.push_back(0.01f * static_cast<float>(j % 97));
  for (int64_t j = 0; j < f; ++j) t.std.push_back(0.5f + 0.003f * static_cast<float>(j % 89));
  t.nan_fill = 0.25f;
  t.clip_lo = -4.0f;
  t.clip_hi = 4.0f;
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, k::TabularWorkspaceBytes(f)));
  auto plan = k::PrepareTabular(t, f, ws, k::TabularWorkspaceBytes(f), s);
  CheckOk(plan.status(), "PrepareTabular");
  const float* in = d_in + shift;  // shift = 1 element: the scalar path
  FillDevice(const_cast<float*>(in), static_cast<size_t>(rows * f) * 4, pattern.data(), pattern.size() * 4);
  auto run = [&] { CheckOk(k::RunTabular(*plan, in, rows, d_out, out_dt, s), "RunTabular"); };
  const Timing tm = Time(run, s, iters);
  CHECK_CUDA(cudaStreamSynchronize(s));
  // CPU twin on the leading rows, which hold the pattern as is.
  const int64_t check_rows = std::min<int64_t>(rows, static_cast<int64_t>(pattern.size()) / f);
  inferline::PreprocessSpec spec;
  spec.kind = inferline::PreprocessSpec::Kind::kTabular;
  spec.tabular = t;
  std::vector<float> cpu(static_cast<size_t>(check_rows * f));
  inferline::PreprocessRows(spec, TensorView{pattern.data(), DataType::kFloat32, Shape{check_rows, f}}, cpu.data());
  const size_t bad = Mismatches(d_out, cpu, cpu.size(), out_dt);
  const double bytes = static_cast<double>(rows * f) * (4.0 + (out_dt == DataType::kFloat32 ? 4.0 : 2.0));
  const std::string detail = "rows=" + std::to_string(rows) + " F=" + std::to_string(f) +
                             " path=" + (shift == 0 ? "vec4" : "scalar");
  Report(name, detail, bytes, tm, CheckText(bad));
  CHECK_CUDA(cudaFree(ws));
}

void BenchImage(const char* name, int64_t n, int32_t h, int32_t w, int32_t out_side, DataType out_dt,
                uint8_t* d_in, void* d_out, cudaStream_t s, int iters) {
  const int32_t c = 3;
  inferline::ImageSpec m;
  m.out_h = m.out_w = out_side;
  m.mean = {123.7f, 116.3f, 103.5f};
  m.std = {58.4f, 57.1f, 57.4f};
  const size_t ws_bytes = k::ImageWorkspaceBytes(c, n);
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
  auto plan = k::PrepareImage(m, c, n, ws, ws_bytes, s);
  CheckOk(plan.status(), "PrepareImage");
  const size_t img_bytes = static_cast<size_t>(h) * w * c;
  std::vector<uint8_t> host(img_bytes * 2);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  FillDevice(d_in, img_bytes * n, host.data(), host.size());
  std::vector<k::ImageDesc> descs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) descs[i] = k::ImageDesc{static_cast<int64_t>(i * img_bytes), h, w};
  k::ImageDesc* pinned = nullptr;  // pinned, as the engine will stage them
  CHECK_CUDA(cudaMallocHost(&pinned, descs.size() * sizeof(k::ImageDesc)));
  std::copy(descs.begin(), descs.end(), pinned);
  auto run = [&] { CheckOk(k::RunImage(*plan, d_in, img_bytes * n, pinned, n, d_out, out_dt, s), "RunImage"); };
  const Timing tm = Time(run, s, iters);
  CHECK_CUDA(cudaStreamSynchronize(s));
  inferline::PreprocessSpec spec;
  spec.kind = inferline::PreprocessSpec::Kind::kImage;
  spec.image = m;
  const int64_t check_n = std::min<int64_t>(n, 2);
  std::vector<float> cpu(static_cast<size_t>(check_n) * c * out_side * out_side);
  inferline::PreprocessRows(spec, TensorView{host.data(), DataType::kUInt8, Shape{check_n, h, w, c}}, cpu.data());
  const size_t bad = Mismatches(d_out, cpu, cpu.size(), out_dt);
  const double out_elem = out_dt == DataType::kFloat32 ? 4.0 : 2.0;
  const double bytes = static_cast<double>(img_bytes * n) + static_cast<double>(n) * c * out_side * out_side * out_elem;
  const std::string detail = "n=" + std::to_string(n) + " in=" + std::to_string(h) + "x" + std::to_string(w) +
                             "x3 out=" + std::to_string(out_side) + "^2";
  Report(name, detail, bytes, tm, CheckText(bad));
  CHECK_CUDA(cudaFreeHost(pinned));
  CHECK_CUDA(cudaFree(ws));
}

// Host cost of one RunTabular call (checks + launch), and back-to-back launch time on the GPU.
void BenchLaunch(float* d_in, void* d_out, cudaStream_t s) {
  inferline::TabularSpec t;
  t.mean = {0.5f};
  t.std = {2.0f};
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, k::TabularWorkspaceBytes(64)));
  auto plan = k::PrepareTabular(t, 64, ws, k::TabularWorkspaceBytes(64), s);
  CheckOk(plan.status(), "PrepareTabular");
  auto run = [&] { CheckOk(k::RunTabular(*plan, d_in, 1, d_out, DataType::kFloat32, s), "RunTabular"); };
  const Timing gpu = Time(run, s, 1000);
  const int calls = 10000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) run();
  const double host_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / calls;
  CHECK_CUDA(cudaStreamSynchronize(s));
  std::printf("%-22s rows=1 F=64 host_us_per_call=%.2f gpu_us_per_launch=%.2f\n", "launch_overhead", host_us, gpu.us);
  g_rows.push_back(Row{"launch_overhead(1x64)", gpu.us, 0.0, 0.0, "host_us=" + std::to_string(host_us).substr(0, 5)});
  CHECK_CUDA(cudaFree(ws));
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int shrink = quick ? 8 : 1;
  int dev = 0;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("device=\"%s\" sm=%d.%d sms=%d l2_MB=%.0f mem_GB=%.0f quick=%d\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, prop.l2CacheSize / 1048576.0, prop.totalGlobalMem / 1e9, quick ? 1 : 0);

  const int64_t elems = (int64_t{1} << 28) / shrink;  // 1 GiB of float32 input at full size
  float* d_in = nullptr;
  void* d_out = nullptr;
  CHECK_CUDA(cudaMalloc(&d_in, static_cast<size_t>(elems) * 4 + 256));
  CHECK_CUDA(cudaMalloc(&d_out, static_cast<size_t>(elems) * 4 + 256));
  cudaStream_t s = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::vector<float> pattern = Pattern(size_t{1} << 22);  // 16 MiB, repeated on the device
  FillDevice(d_in, static_cast<size_t>(elems) * 4, pattern.data(), pattern.size() * 4);

  const size_t copy_bytes = static_cast<size_t>(elems) * 4;
  const int iters = 20;
  const Timing copy = Time([&] { CHECK_CUDA(cudaMemcpyAsync(d_out, d_in, copy_bytes, cudaMemcpyDeviceToDevice, s)); },
                           s, iters);
  g_copy_gbps = 2.0 * copy_bytes / (copy.us * 1e3);
  Report("memcpy_d2d", "bytes_copied=" + std::to_string(copy_bytes), 2.0 * copy_bytes, copy, "-");
  const unsigned copy_blocks = static_cast<unsigned>(prop.multiProcessorCount) * 8;
  const Timing copy_k = Time([&] {
    CopyKernel<<<copy_blocks, 256, 0, s>>>(reinterpret_cast<const float4*>(d_in), static_cast<float4*>(d_out), copy_bytes / 16);
  }, s, iters);
  CHECK_CUDA(cudaGetLastError());
  Report("copy_kernel_float4", "bytes_copied=" + std::to_string(copy_bytes), 2.0 * copy_bytes, copy_k, "-");

  BenchTabular("tabular_fp32", elems / 64, 64, DataType::kFloat32, 0, d_in, d_out, pattern, s, iters);
  BenchTabular("tabular_fp16", elems / 64, 64, DataType::kFloat16, 0, d_in, d_out, pattern, s, iters);
  BenchTabular("tabular_fp32_F63", elems / 64, 63, DataType::kFloat32, 0, d_in, d_out, pattern, s, iters);
  BenchTabular("tabular_fp32_scalar", elems / 64 - 1, 64, DataType::kFloat32, 1, d_in, d_out, pattern, s, iters);
  BenchTabular("tabular_fp32_small", 256, 64, DataType::kFloat32, 0, d_in, d_out, pattern, s, 200);

  auto* d_img = reinterpret_cast<uint8_t*>(d_in);  // reuse the input buffer: 1 GiB / shrink
  BenchImage("image_fp32_480x640", 256 / shrink, 480, 640, 224, DataType::kFloat32, d_img, d_out, s, iters);
  BenchImage("image_fp16_480x640", 256 / shrink, 480, 640, 224, DataType::kFloat16, d_img, d_out, s, iters);
  BenchImage("image_fp32_identity", 1024 / shrink, 224, 224, 224, DataType::kFloat32, d_img, d_out, s, iters);
  BenchImage("image_fp32_small", 8, 480, 640, 224, DataType::kFloat32, d_img, d_out, s, 200);
  BenchLaunch(d_in, d_out, s);

  std::printf("\n%-24s %10s %9s %8s  %s\n", "kernel", "us", "GB/s", "vs_copy", "check");
  bool all_ok = true;
  for (const Row& r : g_rows) {
    std::printf("%-24s %10.2f %9.1f %8.3f  %s\n", r.name.c_str(), r.us, r.gbps, r.vs_copy, r.check.c_str());
    all_ok = all_ok && r.check.rfind("FAIL", 0) != 0;
  }
  CHECK_CUDA(cudaStreamDestroy(s));
  CHECK_CUDA(cudaFree(d_in));
  CHECK_CUDA(cudaFree(d_out));
  return all_ok ? 0 : 1;
}
