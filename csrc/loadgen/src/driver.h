// Private to inferline_grpc_load: what sends the calls. A Driver is unary (a reactor per call
// slot, or direct HTTP/2 with nghttp2: h2_driver.cpp) or streaming (a reactor per bidi stream,
// or direct HTTP/2: h2_stream_driver.cpp); grpc_load.cpp runs either in a closed loop
// (StartClosed: every answer in the window starts the next request) or an open loop (TrySend from
// the one scheduler thread), then Finish waits for what is still owed.
//
// Threads. Reactions run on gRPC's callback threads, sometimes inline at the end of a Start*
// call made by this code: so no Start* call is ever made while holding one of our mutexes. The
// direct drivers run on their connections' threads instead (h2_link.h).
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/generic/generic_stub.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "inferline/grpc_load.h"
#include "recorder.h"

namespace inferline::loadgen {

using Stub = grpc::TemplatedGenericStub<grpc::ByteBuffer, grpc::ByteBuffer>;

// What every driver shares; outlives the driver and every call it made.
class H2Link;  // one HTTP/2 connection of the direct drivers (h2_link.h)
struct H2LinkDeleter {
  void operator()(H2Link* link) const;
};

struct LoadContext {
  const GrpcLoadOptions* options = nullptr;
  RunWindow window;
  Recorder* recorder = nullptr;
  std::vector<grpc::Slice> payloads;          // static slices over options->payloads
  std::vector<grpc::ByteBuffer> buffers;      // one per payload (unary requests)
  std::vector<std::shared_ptr<grpc::Channel>> channels;       // gRPC C-core drivers
  std::vector<std::string> framed;                           // direct unary: each payload, 5-byte prefixed
  std::vector<std::unique_ptr<H2Link, H2LinkDeleter>> h2_links;  // direct: one per connection
  std::atomic<uint64_t> next_payload{0};

  uint32_t NextPayload() {
    return static_cast<uint32_t>(next_payload.fetch_add(1, std::memory_order_relaxed) % payloads.size());
  }
  bool closed_loop() const { return options->rate_rps <= 0; }
};

class Driver {
 public:
  virtual ~Driver() = default;
  // Closed loop, from the run thread at the start time: the first requests of every slot.
  virtual void StartClosed() = 0;
  // Open loop, scheduler thread only: sends one request scheduled at scheduled_ns (recording the
  // lag and the send); false, sending nothing, when max_outstanding are unanswered.
  virtual bool TrySend(int64_t scheduled_ns) = 0;
  // After sending ended: returns once nothing is owed (a stream still owing answers
  // timeout_s after the end is cancelled).
  virtual void Finish() = 0;
};

// The streams of a stream driver, as the slots each has: `streams` of them (0: min(concurrency, 8)
// in a closed loop, 4 in an open one; never more than the closed loop's calls), sharing
// `concurrency` (closed loop) or max_outstanding (open loop) slots as evenly as they divide.
inline std::vector<uint32_t> StreamCapacities(const LoadContext& c) {
  const GrpcLoadOptions& o = *c.options;
  int n = o.streams > 0 ? o.streams : (c.closed_loop() ? std::min(o.concurrency, 8) : 4);
  if (c.closed_loop()) n = std::min(n, o.concurrency);
  const int total = c.closed_loop() ? o.concurrency : std::max(o.max_outstanding, n);
  std::vector<uint32_t> capacities;
  for (int i = 0; i < n; ++i) capacities.push_back(static_cast<uint32_t>(total / n + (i < total % n)));
  return capacities;
}

std::unique_ptr<Driver> MakeUnaryDriver(LoadContext& context);
std::unique_ptr<Driver> MakeStreamDriver(LoadContext& context);
#ifdef INFERLINE_HAVE_NGHTTP2
// Direct calls over HTTP/2 (nghttp2): ConnectH2 opens options->channels connections (once;
// UNAVAILABLE "... not connected: why" on failure), then a driver runs over them: unary calls
// or ModelStreamInfer streams (the stream driver's semantics, stream_driver.cpp's).
Status ConnectH2(LoadContext& c, double timeout_s);
std::unique_ptr<Driver> MakeH2UnaryDriver(LoadContext& context);
std::unique_ptr<Driver> MakeH2StreamDriver(LoadContext& context);
#endif

}  // namespace inferline::loadgen
