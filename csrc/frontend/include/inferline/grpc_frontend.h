// inferline/grpc_frontend.h — the native KServe v2 gRPC frontend: inference RPCs from C++ straight
// into the core's Router, everything else handed to a control plane (Python in `inferline serve`).
//
//   Engine engine;  Router router(&engine);           // models loaded, policies published
//   GrpcFrontendOptions opt;
//   opt.address = "127.0.0.1:8001";
//   Expected<std::unique_ptr<GrpcFrontend>> fe = GrpcFrontend::Start(&router, &engine, opt, nullptr);
//   (*fe)->port();                                    // the bound port (address port 0 = a free one)
//   (*fe)->SetServing(false);                         // ServerReady/health: NOT_SERVING (draining)
//   (*fe)->Shutdown(/*grace_s=*/5);                   // in-flight calls get 5 s, then are cancelled
//
// Service `inference.GRPCInferenceService` (the wire name; the package of inference.proto built
// here is `inference`), with `grpc.health.v1.Health` and server reflection on the same port.
//
// Answered natively, with no Python and no lock beyond the core's:
//  - ModelInfer and ModelStreamInfer. Per request: admission (below) before the message is
//    parsed; parse; parameters `priority` (KServe: 0 default, 1 highest), `timeout` (µs, 0 = none,
//    capped by the gRPC deadline), `routing_key` (string), `sequence_id` (non-zero refused); inputs
//    from raw_input_contents (the TensorView points into the parsed message's bytes, no copy, when
//    the bytes are aligned for the dtype; else one copy) or typed contents; the inputs are ordered
//    for the version RouteRequest::inputs_for names (ResolveInputsFor, router.h); Router::Submit;
//    the answer is encoded from the core's output tensors into raw_output_contents, with
//    `outputs` filtered as requested, model_name/model_version of the version that answered, the
//    request id echoed, and response parameters `routed_to` ("NAME:VERSION") and, when a fallback
//    answered, `fallback_reason` (FallbackReasonName). Status codes are the core's, except
//    RESOURCE_EXHAUSTED (a full queue) answered as UNAVAILABLE; messages are cut to 1 KiB (start
//    and end kept). A cancelled call withdraws its request from the core's queue
//    (InferRequest::cancelled). ModelStreamInfer answers each request as it completes (not in
//    order); a failed request gets `error_message` (with model_name/model_version/id of its
//    request when they were read) and the stream goes on; at most `max_streams` streams are open.
//  - ServerLive (always true), ServerReady and health Check of "" or the inference service
//    (SetServing), health Watch (SERVING/NOT_SERVING as SetServing changes; ends at Shutdown).
// Handed to `control` (nullptr: UNIMPLEMENTED): every other RPC of the inference service and
// health Check of any other service name (a model name), as serialized request bytes; see
// ControlHandler. These are rare calls (metadata, config, statistics, repository, model health).
//
// Admission (AdmissionOptions): a bound on inference requests in flight in this frontend,
// adaptive by default (AIMD against a latency target) or static. A request over it waits in a
// bounded lobby, its bytes unparsed and no core queue slot taken: each time an admitted request
// ends, the newest waiting one that can still meet its deadline is admitted (newest first: under
// a standing queue the older ones are the ones about to miss theirs). A waiting request that can
// no longer meet its deadline (checked as requests end and every 5 ms), or one over the limit that
// arrives so, is held, never admitted, and answered DEADLINE_EXCEEDED just before its deadline or
// after lobby_wait_ms, whichever is first (not at once: clients resending every failure at once
// would cycle faster, each cycle a call for the server to accept and answer); one without a
// deadline that waited lobby_wait_ms, the oldest when the lobby is full (the held first), and
// every one at Shutdown are answered UNAVAILABLE (the first two with trailing metadata
// `retry-after-ms`); a cancelled one leaves. With lobby = 0 a request over the limit is refused
// UNAVAILABLE with `retry-after-ms` at once. Either way before its message is parsed. A request
// whose gRPC deadline is shorter than the predicted latency is refused DEADLINE_EXCEEDED.
//
// Observation: Stats() gives admission state, errors answered by (protocol, code, model) and
// decode/encode histograms per answering (model, version). A RequestTap, when set, receives a
// copy of a share (SetTapShare, per model; 0 by default) of answered inference requests, after
// their answer is sent, for sampled inference logs; SetArmWatch counts a rollout's arms in the
// frontend and copies only the answers the control plane compares (mirrored, shadowed, labelled).
//
// Process-wide effect: Start turns abseil's Mutex deadlock detection off (Debian's abseil, under
// gRPC, checks every lock for cycles: about 1 us per request).
//
// Threads: gRPC's asynchronous API, polled by the frontend's own lanes (`threads`, "il-grpc-N":
// each one completion queue and one thread, which reads calls, admits, parses and routes
// requests and answers the health RPCs); answers are encoded and sent on the core's executor
// threads; ControlHandler::Handle runs on one thread of its own ("il-control").
//
// Thread-safety: every method may be called from any thread. Shutdown (and the destructor,
// which calls Shutdown(0)) must not be called from a ControlHandler or RequestTap callback; the
// Router and Engine must outlive the frontend.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "inferline/engine.h"
#include "inferline/router.h"
#include "inferline/stats.h"
#include "inferline/status.h"

namespace inferline {

struct AdmissionOptions {
  uint32_t static_limit = 0;  // > 0: a fixed cap on requests in flight; 0: adaptive
  uint32_t initial_limit = 1024;
  uint32_t min_limit = 4;
  uint32_t max_limit = 4096;
  double target_ms = 50.0;    // adaptive: latency EWMA above this cuts the limit by a fifth per 100 ms window
  // The lobby (see Admission above): requests over the limit wait here undecoded.
  int64_t lobby = -1;         // at most this many wait: -1 = 8 x max_limit (8 x static_limit when static);
                              // 0 = no lobby: refused at once (UNAVAILABLE), as before
  uint64_t lobby_bytes = 256ull << 20;  // and their request bytes at most this (oldest shed first)
  double lobby_wait_ms = 0;   // a request without a deadline waits at most this; 0 = 4 x target_ms
  // While requests are refused (some held hopeless in the lobby, or one refused in the last
  // 100 ms), the frontend's threads (gRPC's and its own) run SCHED_BATCH, so that calls arriving
  // by the thousand do not preempt the model's threads mid-batch; back to SCHED_OTHER once none
  // has been refused for a second (csrc/frontend/src/io_sched.h). Linux only.
  bool overload_batch_sched = true;
  // And meanwhile its TCP connections run Nagle's algorithm (TCP_NODELAY off): the thousands of
  // small refusals a second to one client leave in fewer segments, each of which costs the
  // server's core a loopback or NIC round of the kernel's TCP. Back to TCP_NODELAY with the
  // threads. Linux only.
  bool overload_coalesce = true;
};

struct GrpcFrontendOptions {
  std::string address = "127.0.0.1:8001";  // host:port ([v6]:port); port 0 = a free one
  int threads = 0;                          // lanes (completion queues, one thread each); 0 = one
                                            // per 8 cores, 1 to 4; at most 64
  uint64_t max_message_bytes = 64ull << 20; // larger requests: RESOURCE_EXHAUSTED from gRPC itself
  uint32_t max_concurrent_streams = 1024;   // per HTTP/2 connection; more wait in the client
  bool reuse_port = false;                  // SO_REUSEPORT: a server's workers share its port
  std::string tls_cert_pem;                 // both set: TLS
  std::string tls_key_pem;
  uint32_t max_streams = 64;                // open ModelStreamInfer streams; more are refused UNAVAILABLE
  double stream_idle_timeout_s = 0;         // > 0: a stream idle this long (no request, or an
                                            // answer unread) is ended UNAVAILABLE, as in Python
  AdmissionOptions admission;
};

// One call handed to the control plane.
struct ControlCall {
  std::string method;   // full path, e.g. "/inference.GRPCInferenceService/ModelMetadata",
                        // "/grpc.health.v1.Health/Check"
  std::string request;  // the serialized request message
  std::vector<std::pair<std::string, std::string>> metadata;  // the client's metadata (e.g. authorization)
  double deadline_left_s = -1;  // seconds before the call's deadline; < 0: none
};

struct ControlReply {
  StatusCode code = StatusCode::kOk;
  std::string message;   // non-OK: the status message
  std::string response;  // OK: the serialized response message
  std::vector<std::pair<std::string, std::string>> trailers;
};

class ControlHandler {
 public:
  virtual ~ControlHandler() = default;
  // Called on the frontend's control thread, one call at a time (a call waiting here holds up
  // only the control calls behind it). `done` must be called exactly once, from
  // any thread, maybe after Handle returns; calling it after the call was cancelled (client gone,
  // Shutdown's grace over) is harmless.
  virtual void Handle(ControlCall call, std::function<void(ControlReply)> done) = 0;
};

// Why a request was copied to the tap (TapRecord::reasons, a bit set).
inline constexpr uint32_t kTapSampled = 1;  // drawn with the model's share (SetTapShare)
inline constexpr uint32_t kTapCopy = 2;     // drawn with its arm's copy share (ArmWatch::arms)
inline constexpr uint32_t kTapLabel = 4;    // it carries a request id and ArmWatch::tap_with_id

// A copy of one answered inference request (SetTapShare, SetArmWatch).
struct TapRecord {
  std::string model;          // as requested
  std::string request_id;
  std::vector<std::string> input_names;  // config order of the version converted for
  std::vector<Tensor> inputs;            // copies
  InferResult result;         // status, outputs (all, config order), answered_model/version, fallback_reason
  std::vector<std::string> output_names; // of the version that answered (empty on error)
  uint64_t latency_us = 0;    // admission to answer
  int64_t requested_version = 0;  // the version the request named (model_version), 0: routed by the policy
  uint32_t reasons = 0;           // kTap* bits
};

// A model under a rollout (SetArmWatch): the frontend counts, per arm (the version the policy
// routed a request to, InferResult::primary_version), the requests, the errors (failed, or
// answered by a fallback), the fallbacks and a latency histogram (admission to answer); and it
// copies a share of each arm's OK answers, not answered by a fallback, to the tap (kTapCopy), at
// most max_copies_per_s of them per arm (0: no cap). Requests naming a version, refused before
// routing, failed for their own input (INVALID_ARGUMENT) or cancelled by the client are not
// counted. Counting costs a few relaxed atomic adds.
struct ArmWatch {
  std::vector<double> latency_bounds_ms;  // ascending bucket upper bounds; one more bucket holds the rest
  std::map<int64_t, double> arms;         // arm version -> share (0..1) of its answers copied
  double max_copies_per_s = 0;
  bool tap_with_id = false;               // also copy every OK answer whose request has an id (kTapLabel)
};

// One arm's counts since the last TakeArmCounts. latency[i]: requests with latency <= bounds[i]
// (and above bounds[i-1]); the last element counts the rest.
struct ArmCounts {
  std::string model;
  int64_t version = 0;
  uint64_t requests = 0, errors = 0, fallbacks = 0;
  std::vector<uint64_t> latency;
};

class RequestTap {
 public:
  virtual ~RequestTap() = default;
  // Called on a core executor thread after the answer went out; must not block.
  virtual void Observe(TapRecord record) noexcept = 0;
};

struct GrpcFrontendStats {
  struct Admission {
    uint32_t limit = 0;
    bool adaptive = true;
    uint32_t in_flight = 0;
    double latency_ms = 0;
    uint64_t admitted = 0;
    uint64_t refused_overload = 0;
    uint64_t refused_deadline = 0;
    uint32_t lobby = 0;                // the lobby's bound (0: none)
    uint32_t parked = 0;               // waiting in the lobby now
    uint32_t held = 0;                 // of those: hopeless, held until just before their deadline
    uint64_t lobby_admitted = 0;       // left the lobby admitted (also counted in `admitted`)
    uint64_t lobby_expired = 0;        // DEADLINE_EXCEEDED: could no longer meet the deadline
    uint64_t lobby_shed = 0;           // UNAVAILABLE: the oldest, the lobby full (or at Shutdown)
    uint64_t lobby_timed_out = 0;      // UNAVAILABLE: no deadline, waited lobby_wait_ms
    uint64_t lobby_cancelled = 0;      // the client went away while waiting
  } admission;
  // (protocol "grpc" | "grpc_stream", gRPC code name, model label) -> count. The model label is
  // the name as sent when the engine has a version of it loaded, "_unknown" for any other name,
  // "" when no name was read (refused before parsing, unparsable message).
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> errors;
  // (model, version as decimal) -> decode, encode histograms (µs), requests answered OK only.
  std::map<std::pair<std::string, std::string>, std::pair<HistogramSnapshot, HistogramSnapshot>> stages;
  uint32_t open_streams = 0;
};

class GrpcFrontend {
 public:
  // Binds and starts serving. UNAVAILABLE naming the address if it cannot bind; INVALID_ARGUMENT
  // for bad options (e.g. only one of the TLS files). `control` and `tap` may be null and must
  // outlive the frontend.
  static Expected<std::unique_ptr<GrpcFrontend>> Start(Router* router, Engine* engine,
                                                       const GrpcFrontendOptions& options,
                                                       ControlHandler* control, RequestTap* tap = nullptr);
  virtual ~GrpcFrontend() = default;

  virtual int port() const noexcept = 0;
  // ServerReady, health Check of ""/the inference service, and Watch follow this (initially true).
  virtual void SetServing(bool serving) noexcept = 0;
  // The share (0..1) of `model`'s answered requests copied to the tap; 0 removes it.
  virtual void SetTapShare(std::string_view model, double share) = 0;
  // Counts `model`'s requests per arm from now on (ArmWatch), replacing its previous watch (an
  // arm kept with the same bounds keeps counting into the same counts); nullopt ends the watch.
  // INVALID_ARGUMENT for unsorted or non-finite bounds, or a share outside [0, 1].
  virtual Status SetArmWatch(std::string_view model, std::optional<ArmWatch> watch) = 0;
  // Every arm's counts since the last call (arms of ended watches once more, then forgotten);
  // arms without a request since are left out.
  virtual std::vector<ArmCounts> TakeArmCounts() = 0;
  virtual GrpcFrontendStats Stats() const = 0;
  // Health turns NOT_SERVING, new calls are refused, calls in flight get `grace_s` to finish and
  // are then cancelled. Returns when every call has ended. Idempotent.
  virtual void Shutdown(double grace_s) = 0;
};

}  // namespace inferline
