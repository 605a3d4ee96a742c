// inferline::GrpcLoad: a native gRPC load generator (the `native` transport of `inferline bench`).
//
//   GrpcLoadOptions o;  o.target = "127.0.0.1:8001";  o.payloads = {serialized ModelInferRequest...};
//   o.concurrency = 64;                                    // closed loop (or o.rate_rps: open loop)
//   auto load = GrpcLoad::Create(std::move(o));            // channels made, not yet connected
//   load.value()->WaitReady(10.0);                         // every channel connected
//   auto result = load.value()->Run(start_at_s);           // blocks to the end of the run
//
// Pre-encoded request bytes (sent round-robin, never copied: static slices over the stored bytes)
// go to `method` over `channels` channels, each its own TCP connection (a local subchannel pool
// per channel). Calls use the callback API (grpc::TemplatedGenericStub<ByteBuffer, ByteBuffer>),
// so the only threads are gRPC's own, plus one scheduler thread in an open loop. Calls are
// instead sent directly over HTTP/2 with nghttp2 (`direct`, where built with libnghttp2): gRPC's
// wire format without C-core's call machinery, a connection per channel (unary: a thread each,
// every call's deadline enforced by the client; streams: a thread per 4 connections); a fraction
// of C-core's CPU per call. `client` in the result says which sent them.
//
// Load. Closed loop: `concurrency` calls always in flight; each answer starts the next call
// while the run lasts, and a request is timed from its send. Open loop (`rate_rps` > 0): request k
// is scheduled at start + phase + k / rate (or after exponential gaps: `poisson`) and timed from
// that scheduled time, so sends are never delayed by answers (no coordinated omission); past
// `max_outstanding` unanswered requests the scheduler waits, and its lag shows it.
//
// Streams (`stream`: ModelStreamInfer). `streams` bidi calls spread over the channels, several
// requests in flight on each. Each request gets a per-stream id appended to its bytes (field 3 of
// ModelInferRequest: a parser keeps the last value), and an answer is matched by the id its
// infer_response echoes; an answer without a known id (a request refused before decoding) goes
// to the oldest request outstanding on its stream. When a stream ends, what it still owed counts
// as errors of the stream's status (NO_ANSWER when it ended OK).
//
// Answers are classified without decoding: a unary call's status code name ("OK", "NOT_FOUND");
// a streamed answer carrying an error_message is "STREAM: <message, first 80 bytes>". A fallback
// answer is an OK one whose bytes contain "fallback_reason" (inferline sets that parameter).
//
// Recording, as python/inferline/loadgen/worker.py's Recorder: requests scheduled (open) or sent
// (closed) in [start + warmup, start + warmup + duration) are recorded; latencies (microseconds)
// go into log buckets floor(log(us) / log1p(precision)) (bucket 0 below 1 us), exactly the
// buckets of python/inferline/loadgen/histogram.py, so its Histogram merges them. Times are
// steady_clock (CLOCK_MONOTONIC, Python's time.monotonic()).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "inferline/status.h"

namespace inferline {

struct GrpcLoadOptions {
  std::string target;                 // host:port
  std::string method = "/inference.GRPCInferenceService/ModelInfer";
  bool stream = false;                // bidi ModelStreamInfer calls (method must be that one)
  std::vector<std::string> payloads;  // serialized requests, sent round-robin; at least one
  int channels = 1;                   // separate connections
  int streams = 0;                    // stream: bidi calls in all (0: min(concurrency, 8) closed, 4 open)
  int concurrency = 1;                // closed loop: calls (or streamed requests) in flight
  double rate_rps = 0;                // > 0: open loop at this rate
  bool poisson = false;               // open loop: exponential gaps
  double phase_s = 0;                 // open loop, constant gaps: offset of the first request
  double warmup_s = 1.0;              // sent, not recorded
  double duration_s = 10.0;           // recorded
  double timeout_s = 30.0;            // unary deadline; how long a stream may owe answers at the end
  int max_outstanding = 10000;        // open loop: past it the scheduler waits
  double interval_s = 1.0;            // latency-over-time resolution
  double precision = 0.01;            // histogram buckets (python loadgen.histogram.DEFAULT_PRECISION)
  uint64_t seed = 0;                  // Poisson gaps
  bool direct = true;                 // speak HTTP/2 directly (nghttp2), where built with it
};

// A histogram in python/inferline/loadgen/histogram.py's scheme (Histogram.to_dict's fields).
struct LoadHistogram {
  std::vector<std::pair<int32_t, uint64_t>> counts;  // (bucket index, count), non-empty buckets
  uint64_t count = 0;
  double total_us = 0;
  double min_us = 0;                  // meaningless when count == 0
  double max_us = 0;
};

struct GrpcLoadResult {
  LoadHistogram latency;              // OK answers of the measured window
  LoadHistogram lag;                  // open loop: actual send minus scheduled (at least 1 us)
  std::map<int64_t, LoadHistogram> series;   // interval index -> latencies scheduled in it
  std::map<std::string, uint64_t> errors;    // status name -> count (measured window)
  uint64_t ok = 0;
  uint64_t fallback = 0;              // OK answers carrying fallback_reason
  uint64_t sent_total = 0;            // every request sent, warm-up included
  uint64_t answered_total = 0;        // every answer (any status), warm-up included
  double achieved_rps = 0;            // ok / duration_s
  double cpu_s = 0;                   // this process's CPU (every thread) from window start to the end
  std::string client;                 // what sent the calls: "nghttp2" (direct) or "grpc" (C-core)
};

struct GrpcLoadProgress {
  uint64_t answered_total = 0;
  uint64_t errors = 0;                // errors of the measured window so far
};

class GrpcLoad {
 public:
  // Checks the options and makes the channels (no connection yet).
  static Expected<std::unique_ptr<GrpcLoad>> Create(GrpcLoadOptions options);
  virtual ~GrpcLoad() = default;

  // Connects every channel; UNAVAILABLE when one is not connected within timeout_s.
  virtual Status WaitReady(double timeout_s) = 0;
  // Runs the load from start_at_s (steady_clock seconds) and returns once every request sent
  // is answered (or its stream is cancelled, timeout_s after the end). Call once.
  virtual Expected<GrpcLoadResult> Run(double start_at_s) = 0;
  // Safe to call from any thread while Run runs.
  virtual GrpcLoadProgress Progress() const = 0;
};

}  // namespace inferline
