// Private to inferline_grpc_load: one HTTP/2 connection spoken directly with nghttp2, shared by
// the direct drivers (unary calls: h2_driver.cpp; ModelStreamInfer: h2_stream_driver.cpp).
//
//   ConnectH2(context, timeout_s);             // driver.h: options->channels links, connected
//   loop.Add(link, &handler);  loop.Start();   // a thread runs the loop over its links from now on
//   link->Wake();  ...  loop.Stop();           // any thread; Stop joins once every handler is idle
//
// The loop (an H2Loop: one thread over epoll, its links' sockets and an eventfd) repeats: each
// link receives what its socket has (nghttp2 callbacks reach each stream's H2Stream), its
// handler's Pass runs (work posted by other threads, new requests), and what its session has to
// send goes out in one write; then the loop waits. A session is not thread-safe: once started,
// only its loop's thread touches it (the H2Stream and H2Handler methods all run there). When a
// connection is lost its handler's Lost ends every stream itself: nghttp2 calls nothing more.
//
// A gRPC call is a POST (content-type application/grpc, te: trailers) whose bodies are 5-byte
// prefixed messages; it ends with trailers carrying grpc-status (or with headers alone:
// "trailers-only"), or with RST_STREAM. ClosedCode turns what was seen into a status code.
#pragma once

#include <nghttp2/nghttp2.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "driver.h"

namespace inferline::loadgen {

constexpr int kGrpcCancelled = 1;
constexpr int kGrpcUnknown = 2;
constexpr int kGrpcDeadlineExceeded = 4;
constexpr int kGrpcResourceExhausted = 8;
constexpr int kGrpcUnavailable = 14;

// gRPC's 5-byte message prefix: not compressed, then the length (big-endian).
inline void PutPrefix(char* out, uint32_t length) {
  out[0] = 0;
  for (int i = 0; i < 4; ++i) out[1 + i] = static_cast<char>(length >> (24 - 8 * i));
}

// One HTTP/2 stream: the stream user data and the data source of its request. Link thread only.
class H2Stream {
 public:
  virtual ~H2Stream() = default;
  // Response DATA (prefixed messages, split anywhere).
  virtual void OnData(const uint8_t* data, size_t length) = 0;
  // The stream closed with this gRPC status code (ClosedCode); nghttp2 is done with it.
  virtual void OnClose(int code) = 0;
  // nghttp2's data source read callback: request bytes into buf, NGHTTP2_DATA_FLAG_EOF on the last.
  virtual ssize_t ReadBody(uint8_t* buf, size_t length, uint32_t* flags) = 0;

  int32_t stream_id = 0;
  int grpc_status = -1;               // from the trailers (or trailers-only headers); -1: none
  bool http_error = false;            // :status other than 200
};

// A status code for a closed stream: its grpc-status; else from the HTTP status or the
// RST_STREAM code (CANCEL: CANCELLED, ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED, NO_ERROR without a
// status: UNKNOWN, anything else: UNAVAILABLE).
int ClosedCode(const H2Stream& stream, uint32_t error_code);

// A driver's part of a link: called on the link's thread.
class H2Handler {
 public:
  virtual ~H2Handler() = default;
  // Each pass, after receiving: take posted work, submit requests. stopping: Stop was called.
  virtual void Pass(int64_t now_ns, bool stopping) = 0;
  // The connection is gone: end every stream not yet closed (no nghttp2 callback will).
  virtual void Lost() = 0;
  // Nothing owed: once Stop was called, the loop ends at the first idle pass.
  virtual bool Idle() const = 0;
  // The longest wait for the socket or a wake-up (deadline checks).
  virtual int WaitMs() const { return 50; }
};

class H2Loop;

class H2Link {
 public:
  H2Link(LoadContext& c, unsigned index) : c_(c), index_(index) {}
  ~H2Link();
  H2Link(const H2Link&) = delete;
  H2Link& operator=(const H2Link&) = delete;

  // TCP, the client preface and the server's SETTINGS, before deadline_ns.
  Status Connect(int64_t deadline_ns);
  // Any thread: the link's loop takes another pass soon.
  void Wake();

  // Link thread. Submits a POST of path (with grpc-timeout when timeout is non-empty) whose body
  // stream->ReadBody gives; the stream id (stream->stream_id), or < 0 when nghttp2 refused it.
  int32_t Request(const std::string& path, const std::string& timeout, H2Stream* stream);
  void Reset(int32_t stream_id, uint32_t error_code);
  void ResumeData(int32_t stream_id) { nghttp2_session_resume_data(session_, stream_id); }
  bool dead() const { return dead_; }
  unsigned index() const { return index_; }

 private:
  friend class H2Loop;
  static int OnHeader(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t, void* self);
  static int OnData(nghttp2_session* s, uint8_t, int32_t stream_id, const uint8_t* data, size_t len, void* self);
  static int OnClose(nghttp2_session* s, int32_t stream_id, uint32_t error_code, void* self);
  static int OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*);

  Status MakeSession();
  void Turn(bool readable, bool stopping);  // the loop's pass over this link
  void Lose();          // the connection is gone: dead_, and the handler ends its streams
  bool Flush();         // what the session has to send, in as few writes as the socket takes
  bool Receive();       // what the socket has; false once the connection is gone

  LoadContext& c_;
  const unsigned index_;
  H2Loop* loop_ = nullptr;              // set by H2Loop::Add
  H2Handler* handler_ = nullptr;
  int fd_ = -1;
  nghttp2_session* session_ = nullptr;
  std::string out_;                     // frames not yet written, from out_sent_
  size_t out_sent_ = 0;
  bool got_settings_ = false;
  bool dead_ = false;
  bool want_out_ = false;               // the socket would block: wait for EPOLLOUT
};

// A thread running the loop over its links, each with its driver's handler. One wake-up then
// serves every link with something to read, and each link's frames go out in one write.
class H2Loop {
 public:
  H2Loop();
  ~H2Loop();
  H2Loop(const H2Loop&) = delete;
  H2Loop& operator=(const H2Loop&) = delete;

  void Add(H2Link* link, H2Handler* handler);  // before Start
  void Start();
  // Any thread: the loop takes another pass soon.
  void Wake();
  // Any thread: the loop ends once every handler is idle; joins it.
  void Stop();

 private:
  void Run();

  std::vector<H2Link*> links_;
  int wake_ = -1;                       // eventfd
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

// Starts loops over c.h2_links (link i with handlers[i]), links_per_loop links each.
std::vector<std::unique_ptr<H2Loop>> StartLoops(LoadContext& c, const std::vector<H2Handler*>& handlers,
                                                size_t links_per_loop);

}  // namespace inferline::loadgen
