// Unary calls over HTTP/2 spoken directly with nghttp2 (driver.h, MakeH2UnaryDriver): gRPC's
// wire format is a POST per call (content-type application/grpc, te: trailers, grpc-timeout)
// whose body is the 5-byte prefixed message, answered by headers, the prefixed response and
// trailers with grpc-status (or headers alone: "trailers-only"). Without gRPC C-core's call
// machinery a call costs a few microseconds of client CPU, so the client is never what limits.
//
// One H2Link per connection, each with its own thread running an epoll loop over the socket and
// an eventfd: the session (not thread-safe) is only touched by that thread once the driver
// starts it. The scheduler thread (open loop) hands it requests through a mutex-guarded list and
// the eventfd. Each call's deadline is enforced here: past timeout_s it is recorded
// DEADLINE_EXCEEDED and its stream reset. A call is recorded exactly once (answered, timed out,
// or failed with its connection) and freed once its stream has closed.
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "answer.h"
#include "driver.h"

namespace inferline::loadgen {

namespace {

constexpr int kUnavailable = 14;
constexpr int kDeadlineExceeded = 4;

struct H2Call {
  int64_t scheduled_ns = 0;
  int64_t deadline_ns = 0;
  const std::string* framed = nullptr;  // the prefixed request
  size_t sent = 0;
  int32_t stream_id = 0;
  int grpc_status = -1;
  bool http_error = false;
  bool recorded = false;
  bool closed = false;                   // the session is done with it
  std::string body;
};

// Splits "host:port" (IPv6 in brackets).
bool SplitTarget(const std::string& target, std::string* host, std::string* port) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon + 1 >= target.size()) return false;
  *host = target.substr(0, colon);
  *port = target.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  return !host->empty();
}

}  // namespace

class H2UnaryDriver;

class H2Link {
 public:
  H2Link(LoadContext& c, unsigned index) : c_(c), index_(index) {}
  ~H2Link() {
    if (thread_.joinable()) thread_.join();
    if (session_ != nullptr) nghttp2_session_del(session_);
    if (fd_ >= 0) close(fd_);
    if (wake_ >= 0) close(wake_);
  }

  // TCP, the client preface and the server's SETTINGS, before deadline_ns.
  Status Connect(int64_t deadline_ns);
  // Runs the loop on its own thread from now on.
  void Start(H2UnaryDriver* driver, int closed_calls);
  // Any thread: a call scheduled at scheduled_ns (open loop).
  void Post(int64_t scheduled_ns);
  // Any thread: the loop ends once its calls are all recorded and closed; joins it.
  void Stop();

 private:
  static ssize_t Send(nghttp2_session*, const uint8_t* data, size_t length, int, void* self);
  static int OnHeader(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t, void* self);
  static int OnData(nghttp2_session* s, uint8_t, int32_t stream_id, const uint8_t* data, size_t len, void* self);
  static int OnClose(nghttp2_session* s, int32_t stream_id, uint32_t error_code, void* self);
  static int OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*);

  Status MakeSession();
  void Loop();
  void Submit(int64_t scheduled_ns);
  void Finish(H2Call& call, int code);
  void FailAll();
  bool Pump();          // send, receive what is ready, send; false once the connection is gone
  bool Receive();       // what the socket has; false once the connection is gone
  void ExpireAndFree(int64_t now);

  LoadContext& c_;
  const unsigned index_;
  H2UnaryDriver* driver_ = nullptr;
  int fd_ = -1;
  int wake_ = -1;
  nghttp2_session* session_ = nullptr;
  bool got_settings_ = false;
  bool dead_ = false;
  bool want_out_ = false;               // the socket would block: wait for EPOLLOUT
  int restart_ = 0;                     // closed loop: calls to start after this pass
  std::deque<std::unique_ptr<H2Call>> calls_;  // start (= deadline) order; loop thread only
  std::thread thread_;
  std::string timeout_value_;           // grpc-timeout, e.g. "30000m"

  std::mutex mu_;
  std::vector<int64_t> posted_;         // requires mu_
  int closed_start_ = 0;                // requires mu_
  bool stop_ = false;                   // requires mu_
};

class H2UnaryDriver final : public Driver {
 public:
  explicit H2UnaryDriver(LoadContext& c) : c_(c) {}
  ~H2UnaryDriver() override {
    for (auto& link : c_.h2_links) link->Stop();
  }

  void StartClosed() override {
    const int n = c_.options->concurrency;
    const int links = static_cast<int>(c_.h2_links.size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_ = n;
    }
    for (int i = 0; i < links; ++i) c_.h2_links[i]->Start(this, n / links + (i < n % links ? 1 : 0));
  }

  bool TrySend(int64_t scheduled_ns) override {
    if (!started_) {
      for (auto& link : c_.h2_links) link->Start(this, 0);
      started_ = true;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (in_flight_ >= c_.options->max_outstanding) return false;
      ++in_flight_;
    }
    c_.recorder->RecordLag(scheduled_ns, NowNs());
    c_.recorder->CountSent();
    c_.h2_links[next_++ % c_.h2_links.size()]->Post(scheduled_ns);
    return true;
  }

  void Finish() override {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return in_flight_ == 0; });
  }

  // A link's call was recorded and will not be restarted.
  void Ended() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--in_flight_ == 0) idle_.notify_all();
  }

 private:
  LoadContext& c_;
  bool started_ = false;                // scheduler thread only
  size_t next_ = 0;                     // scheduler thread only
  std::mutex mu_;
  std::condition_variable idle_;
  int in_flight_ = 0;                   // requires mu_
};

// ---- connecting ---------------------------------------------------------------------------

Status H2Link::Connect(int64_t deadline_ns) {
  const std::string what = "GrpcLoad: connection " + std::to_string(index_) + " to " + c_.options->target;
  auto unavailable = [&](const std::string& why) { return Status(StatusCode::kUnavailable, what + " not connected: " + why); };
  std::string host, port;
  if (!SplitTarget(c_.options->target, &host, &port)) return unavailable("the target is not host:port");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int e = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); e != 0) return unavailable(gai_strerror(e));
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> list(found, freeaddrinfo);
  fd_ = socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return unavailable(std::strerror(errno));
  if (connect(fd_, found->ai_addr, found->ai_addrlen) != 0 && errno != EINPROGRESS) {
    return unavailable(std::strerror(errno));
  }
  auto wait_for = [&](short events) {
    const int64_t left_ms = (deadline_ns - NowNs()) / 1000000;
    if (left_ms <= 0) return false;
    pollfd p{fd_, events, 0};
    return poll(&p, 1, static_cast<int>(std::min<int64_t>(left_ms, 100))) >= 0;
  };
  for (;;) {
    pollfd p{fd_, POLLOUT, 0};
    if (poll(&p, 1, 0) > 0) break;
    if (!wait_for(POLLOUT)) return unavailable("timed out");
  }
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return unavailable(std::strerror(err));
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Status s = MakeSession();
  if (!s.ok()) return s;
  while (!got_settings_) {
    if (!Pump()) return unavailable("the peer closed the connection");
    if (got_settings_) break;
    if (!wait_for(POLLIN)) return unavailable("no HTTP/2 SETTINGS from the peer in time");
  }
  wake_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_ < 0) return unavailable(std::strerror(errno));
  return Status::Ok();
}

Status H2Link::MakeSession() {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_send_callback(cb, &H2Link::Send);
  nghttp2_session_callbacks_set_on_header_callback(cb, &H2Link::OnHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &H2Link::OnData);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, &H2Link::OnClose);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &H2Link::OnFrame);
  const int rv = nghttp2_session_client_new(&session_, cb, this);
  nghttp2_session_callbacks_del(cb);
  if (rv != 0) return Status(StatusCode::kInternal, std::string("GrpcLoad: nghttp2: ") + nghttp2_strerror(rv));
  const nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                             {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 16 << 20}};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 2);
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, 1 << 30);
  const int64_t ms = std::max<int64_t>(1, static_cast<int64_t>(c_.options->timeout_s * 1000.0));
  timeout_value_ = std::to_string(std::min<int64_t>(ms, 99999999)) + "m";  // at most 8 digits
  return Status::Ok();
}

// ---- nghttp2 callbacks (the link's thread) ------------------------------------------------

ssize_t H2Link::Send(nghttp2_session*, const uint8_t* data, size_t length, int, void* self) {
  auto* link = static_cast<H2Link*>(self);
  const ssize_t n = send(link->fd_, data, length, MSG_NOSIGNAL);
  if (n >= 0) return n;
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    link->want_out_ = true;
    return NGHTTP2_ERR_WOULDBLOCK;
  }
  return NGHTTP2_ERR_CALLBACK_FAILURE;
}

int H2Link::OnHeader(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                     const uint8_t* value, size_t valuelen, uint8_t, void*) {
  auto* call = static_cast<H2Call*>(nghttp2_session_get_stream_user_data(s, frame->hd.stream_id));
  if (call == nullptr) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), namelen);
  const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == "grpc-status") {
    int code = 0;
    for (char ch : v) code = (ch >= '0' && ch <= '9') ? code * 10 + (ch - '0') : 2;
    call->grpc_status = code;
  } else if (n == ":status" && v != "200") {
    call->http_error = true;
  }
  return 0;
}

int H2Link::OnData(nghttp2_session* s, uint8_t, int32_t stream_id, const uint8_t* data, size_t len, void*) {
  auto* call = static_cast<H2Call*>(nghttp2_session_get_stream_user_data(s, stream_id));
  if (call != nullptr) call->body.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int H2Link::OnClose(nghttp2_session* s, int32_t stream_id, uint32_t error_code, void* self) {
  auto* link = static_cast<H2Link*>(self);
  auto* call = static_cast<H2Call*>(nghttp2_session_get_stream_user_data(s, stream_id));
  if (call == nullptr) return 0;
  call->closed = true;
  if (!call->recorded) {
    int code = call->grpc_status;
    if (code < 0 || call->http_error) code = error_code == NGHTTP2_NO_ERROR && !call->http_error ? 2 : kUnavailable;
    link->Finish(*call, code);
  }
  return 0;
}

int H2Link::OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* self) {
  if (frame->hd.type == NGHTTP2_SETTINGS) static_cast<H2Link*>(self)->got_settings_ = true;
  return 0;
}

ssize_t H2Link::ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                         nghttp2_data_source* source, void*) {
  auto* call = static_cast<H2Call*>(source->ptr);
  const size_t n = std::min(length, call->framed->size() - call->sent);
  std::memcpy(buf, call->framed->data() + call->sent, n);
  call->sent += n;
  if (call->sent == call->framed->size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

// ---- the loop -------------------------------------------------------------------------------

void H2Link::Start(H2UnaryDriver* driver, int closed_calls) {
  driver_ = driver;
  closed_start_ = closed_calls;
  thread_ = std::thread([this] { Loop(); });
}

void H2Link::Post(int64_t scheduled_ns) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted_.push_back(scheduled_ns);
  }
  const uint64_t one = 1;
  (void)!write(wake_, &one, sizeof one);
}

void H2Link::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  if (wake_ >= 0) {
    const uint64_t one = 1;
    (void)!write(wake_, &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
}

void H2Link::Submit(int64_t scheduled_ns) {
  auto call = std::make_unique<H2Call>();
  call->scheduled_ns = scheduled_ns;
  call->deadline_ns = NowNs() + static_cast<int64_t>(c_.options->timeout_s * 1e9);
  call->framed = &c_.framed[c_.NextPayload()];
  H2Call* raw = call.get();
  calls_.push_back(std::move(call));
  if (dead_) {
    raw->closed = true;
    Finish(*raw, kUnavailable);
    return;
  }
  auto nv = [](const char* name, const std::string& value) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), std::strlen(name), value.size(),
                      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
  };
  static const std::string kPost = "POST", kHttp = "http", kGrpc = "application/grpc", kTrailers = "trailers";
  const nghttp2_nv headers[] = {nv(":method", kPost),        nv(":scheme", kHttp),
                                nv(":path", c_.options->method), nv(":authority", c_.options->target),
                                nv("content-type", kGrpc),   nv("te", kTrailers),
                                nv("grpc-timeout", timeout_value_)};
  nghttp2_data_provider body;
  body.source.ptr = raw;
  body.read_callback = &H2Link::ReadBody;
  const int32_t id = nghttp2_submit_request(session_, nullptr, headers, sizeof headers / sizeof headers[0], &body, raw);
  if (id < 0) {
    raw->closed = true;
    Finish(*raw, kUnavailable);
    return;
  }
  raw->stream_id = id;
}

// Records the call; in a closed loop an answer in the window starts the next one.
void H2Link::Finish(H2Call& call, int code) {
  call.recorded = true;
  const int64_t now = NowNs();
  Answer answer{StatusName(code), false};
  if (code == 0) {
    // the body is the 5-byte prefix and the message; fallback answers carry "fallback_reason"
    answer.fallback = HasFallback(call.body);
  }
  c_.recorder->Record(index_, call.scheduled_ns, now, answer);
  if (c_.closed_loop() && now < c_.window.measure_to_ns && !dead_) {
    ++restart_;
    return;
  }
  driver_->Ended();
}

void H2Link::FailAll() {
  dead_ = true;
  for (auto& call : calls_) {
    call->closed = true;
    if (!call->recorded) Finish(*call, kUnavailable);
  }
}

bool H2Link::Pump() { return nghttp2_session_send(session_) == 0 && Receive() && nghttp2_session_send(session_) == 0; }

bool H2Link::Receive() {
  uint8_t buf[65536];
  for (;;) {
    const ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n == 0) return false;
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      return false;
    }
    if (nghttp2_session_mem_recv(session_, buf, static_cast<size_t>(n)) < 0) return false;
    if (static_cast<size_t>(n) < sizeof buf) break;  // drained (a short read): spare the EAGAIN call
  }
  return true;
}

void H2Link::ExpireAndFree(int64_t now) {
  for (auto& call : calls_) {
    if (call->deadline_ns > now) break;  // deadlines follow the start order
    if (call->recorded) continue;
    Finish(*call, kDeadlineExceeded);
    if (!call->closed) nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_CANCEL);
  }
  while (!calls_.empty() && calls_.front()->recorded && calls_.front()->closed) calls_.pop_front();
}

void H2Link::Loop() {
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_;
  epoll_ctl(ep, EPOLL_CTL_ADD, wake_, &ev);
  ev.events = EPOLLIN;
  ev.data.fd = fd_;
  epoll_ctl(ep, EPOLL_CTL_ADD, fd_, &ev);
  bool out_armed = false;
  std::vector<int64_t> posted;
  for (;;) {
    bool stop = false;
    int start = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      posted.swap(posted_);
      start = closed_start_;
      closed_start_ = 0;
      stop = stop_;
    }
    const int64_t now = NowNs();
    for (int i = 0; i < start; ++i) {
      c_.recorder->CountSent();
      Submit(now);
    }
    for (int64_t scheduled : posted) Submit(scheduled);
    posted.clear();
    if (!dead_ && !Receive()) FailAll();
    while (restart_ > 0) {  // closed loop: each answer in the window starts the next call
      --restart_;
      c_.recorder->CountSent();
      Submit(NowNs());
    }
    ExpireAndFree(NowNs());
    if (!dead_ && nghttp2_session_send(session_) != 0) FailAll();  // one write for all of the above
    if (dead_) calls_.clear();  // every call recorded; the session sends nothing more
    if (stop && calls_.empty()) break;
    const bool want_out = want_out_ && !dead_;
    want_out_ = false;
    if (want_out != out_armed) {
      ev.events = want_out ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
      ev.data.fd = fd_;
      epoll_ctl(ep, EPOLL_CTL_MOD, fd_, &ev);
      out_armed = want_out;
    }
    epoll_event got[2];
    const int timeout_ms = calls_.empty() ? 50 : 5;  // deadlines are checked at least this often
    const int n = epoll_wait(ep, got, 2, dead_ ? 50 : timeout_ms);
    for (int i = 0; i < n; ++i) {
      if (got[i].data.fd == wake_) {
        uint64_t drained;
        (void)!read(wake_, &drained, sizeof drained);
      }
    }
  }
  close(ep);
}

// ---- LoadContext hooks ----------------------------------------------------------------------

Status ConnectH2(LoadContext& c, double timeout_s) {
  if (!c.h2_links.empty()) return Status::Ok();
  c.framed.clear();
  for (const std::string& p : c.options->payloads) {
    std::string f(5, '\0');
    const uint32_t n = static_cast<uint32_t>(p.size());
    f[1] = static_cast<char>(n >> 24);
    f[2] = static_cast<char>(n >> 16);
    f[3] = static_cast<char>(n >> 8);
    f[4] = static_cast<char>(n);
    c.framed.push_back(f + p);
  }
  const int64_t deadline = NowNs() + static_cast<int64_t>(timeout_s * 1e9);
  for (int i = 0; i < c.options->channels; ++i) {
    auto link = std::make_unique<H2Link>(c, static_cast<unsigned>(i));
    Status s = link->Connect(deadline);
    if (!s.ok()) {
      c.h2_links.clear();
      return s;
    }
    c.h2_links.emplace_back(link.release());
  }
  return Status::Ok();
}

void H2LinkDeleter::operator()(H2Link* link) const { delete link; }

std::unique_ptr<Driver> MakeH2UnaryDriver(LoadContext& context) {
  return std::make_unique<H2UnaryDriver>(context);
}

}  // namespace inferline::loadgen
