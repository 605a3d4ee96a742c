// H2Link (h2_link.h): connecting, the nghttp2 session and its callbacks, and the loop.
#include "h2_link.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string_view>

namespace inferline::loadgen {

namespace {

// Splits "host:port" (IPv6 in brackets).
bool SplitTarget(const std::string& target, std::string* host, std::string* port) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon + 1 >= target.size()) return false;
  *host = target.substr(0, colon);
  *port = target.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  return !host->empty();
}

H2Stream* StreamOf(nghttp2_session* s, int32_t stream_id) {
  return static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(s, stream_id));
}

}  // namespace

int ClosedCode(const H2Stream& stream, uint32_t error_code) {
  if (stream.http_error) return kGrpcUnavailable;
  if (stream.grpc_status >= 0) return stream.grpc_status;
  switch (error_code) {
    case NGHTTP2_NO_ERROR: return kGrpcUnknown;
    case NGHTTP2_CANCEL: return kGrpcCancelled;
    case NGHTTP2_ENHANCE_YOUR_CALM: return kGrpcResourceExhausted;
    default: return kGrpcUnavailable;
  }
}

H2Link::~H2Link() {
  if (session_ != nullptr) nghttp2_session_del(session_);
  if (fd_ >= 0) close(fd_);
}

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
    if (!Flush() || !Receive() || !Flush()) return unavailable("the peer closed the connection");
    if (got_settings_) break;
    if (!wait_for(POLLIN)) return unavailable("no HTTP/2 SETTINGS from the peer in time");
  }
  return Status::Ok();
}

Status H2Link::MakeSession() {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
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
  return Status::Ok();
}

// ---- nghttp2 callbacks (the link's thread) ------------------------------------------------

int H2Link::OnHeader(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                     const uint8_t* value, size_t valuelen, uint8_t, void*) {
  H2Stream* stream = StreamOf(s, frame->hd.stream_id);
  if (stream == nullptr) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), namelen);
  const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == "grpc-status") {
    int code = 0;
    for (char ch : v) code = (ch >= '0' && ch <= '9') ? code * 10 + (ch - '0') : kGrpcUnknown;
    stream->grpc_status = code;
  } else if (n == ":status" && v != "200") {
    stream->http_error = true;
  }
  return 0;
}

int H2Link::OnData(nghttp2_session* s, uint8_t, int32_t stream_id, const uint8_t* data, size_t len, void*) {
  if (H2Stream* stream = StreamOf(s, stream_id)) stream->OnData(data, len);
  return 0;
}

int H2Link::OnClose(nghttp2_session* s, int32_t stream_id, uint32_t error_code, void*) {
  if (H2Stream* stream = StreamOf(s, stream_id)) stream->OnClose(ClosedCode(*stream, error_code));
  return 0;
}

int H2Link::OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* self) {
  if (frame->hd.type == NGHTTP2_SETTINGS) static_cast<H2Link*>(self)->got_settings_ = true;
  return 0;
}

ssize_t H2Link::ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                         nghttp2_data_source* source, void*) {
  return static_cast<H2Stream*>(source->ptr)->ReadBody(buf, length, flags);
}

// ---- requests (the link's thread) ---------------------------------------------------------

int32_t H2Link::Request(const std::string& path, const std::string& timeout, H2Stream* stream) {
  auto nv = [](const char* name, const std::string& value) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), std::strlen(name), value.size(),
                      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
  };
  static const std::string kPost = "POST", kHttp = "http", kGrpc = "application/grpc", kTrailers = "trailers";
  const nghttp2_nv headers[] = {nv(":method", kPost),           nv(":scheme", kHttp),
                                nv(":path", path),               nv(":authority", c_.options->target),
                                nv("content-type", kGrpc),      nv("te", kTrailers),
                                nv("grpc-timeout", timeout)};
  const size_t count = sizeof headers / sizeof headers[0] - (timeout.empty() ? 1 : 0);
  nghttp2_data_provider body;
  body.source.ptr = stream;
  body.read_callback = &H2Link::ReadBody;
  const int32_t id = dead_ ? -1 : nghttp2_submit_request(session_, nullptr, headers, count, &body, stream);
  stream->stream_id = id;
  return id;
}

void H2Link::Reset(int32_t stream_id, uint32_t error_code) {
  if (!dead_) nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, error_code);
}

// ---- writing and reading (the loop's thread) ------------------------------------------------

bool H2Link::Flush() {
  constexpr size_t kWriteBytes = 64 << 10;  // frames gathered per write
  for (;;) {
    while (out_sent_ < out_.size()) {
      const ssize_t n = send(fd_, out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        want_out_ = true;
        return true;
      }
      if (n < 0) return false;
      out_sent_ += static_cast<size_t>(n);
    }
    out_.clear();
    out_sent_ = 0;
    while (out_.size() < kWriteBytes) {
      const uint8_t* frame = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &frame);
      if (n < 0) return false;
      if (n == 0) break;
      out_.append(reinterpret_cast<const char*>(frame), static_cast<size_t>(n));
    }
    if (out_.empty()) return true;
  }
}

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

void H2Link::Lose() {
  dead_ = true;
  out_.clear();
  out_sent_ = 0;
  handler_->Lost();
}

void H2Link::Wake() { loop_->Wake(); }

void H2Link::Turn(bool readable, bool stopping) {
  if (readable && !dead_ && !Receive()) Lose();
  handler_->Pass(NowNs(), stopping);
  if (!dead_ && !Flush()) Lose();  // one write for all of the above
}

// ---- the loop -------------------------------------------------------------------------------

H2Loop::H2Loop() : wake_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

H2Loop::~H2Loop() {
  Stop();
  if (wake_ >= 0) close(wake_);
}

void H2Loop::Add(H2Link* link, H2Handler* handler) {
  link->loop_ = this;
  link->handler_ = handler;
  links_.push_back(link);
}

void H2Loop::Start() { thread_ = std::thread([this] { Run(); }); }

void H2Loop::Wake() {
  const uint64_t one = 1;
  (void)!write(wake_, &one, sizeof one);
}

void H2Loop::Stop() {
  stop_.store(true, std::memory_order_release);
  Wake();
  if (thread_.joinable()) thread_.join();
}

void H2Loop::Run() {
  constexpr uint32_t kWakeTag = UINT32_MAX;  // epoll data of the eventfd; a link's is its position
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u32 = kWakeTag;
  epoll_ctl(ep, EPOLL_CTL_ADD, wake_, &ev);
  const size_t n = links_.size();
  for (uint32_t i = 0; i < n; ++i) {
    ev.data.u32 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, links_[i]->fd_, &ev);
  }
  std::vector<char> readable(n, 1), out_armed(n, 0), watched(n, 1);
  std::vector<epoll_event> got(n + 1);
  for (;;) {
    const bool stop = stop_.load(std::memory_order_acquire);
    bool idle = true;
    int wait_ms = 50;
    for (size_t i = 0; i < n; ++i) {
      H2Link& link = *links_[i];
      link.Turn(readable[i], stop);
      readable[i] = 0;
      idle = idle && link.handler_->Idle();
      wait_ms = std::min(wait_ms, link.handler_->WaitMs());
      const bool want_out = link.want_out_;
      link.want_out_ = false;
      if (link.dead_) {
        if (watched[i]) epoll_ctl(ep, EPOLL_CTL_DEL, link.fd_, nullptr);  // its EOF would wake us forever
        watched[i] = 0;
      } else if (want_out != static_cast<bool>(out_armed[i])) {
        ev.events = want_out ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
        ev.data.u32 = static_cast<uint32_t>(i);
        epoll_ctl(ep, EPOLL_CTL_MOD, link.fd_, &ev);
        out_armed[i] = want_out;
      }
    }
    if (stop && idle) break;
    const int events = epoll_wait(ep, got.data(), static_cast<int>(got.size()), wait_ms);
    for (int e = 0; e < events; ++e) {
      if (got[e].data.u32 == kWakeTag) {
        uint64_t drained;
        (void)!read(wake_, &drained, sizeof drained);
      } else {
        readable[got[e].data.u32] = 1;
      }
    }
  }
  close(ep);
}

// ---- LoadContext hooks ----------------------------------------------------------------------

Status ConnectH2(LoadContext& c, double timeout_s) {
  if (!c.h2_links.empty()) return Status::Ok();
  c.framed.clear();
  for (size_t i = 0; i < (c.options->stream ? 0 : c.options->payloads.size()); ++i) {  // unary bodies
    const std::string& p = c.options->payloads[i];
    std::string f(5, '\0');
    PutPrefix(f.data(), static_cast<uint32_t>(p.size()));
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

std::vector<std::unique_ptr<H2Loop>> StartLoops(LoadContext& c, const std::vector<H2Handler*>& handlers,
                                                size_t links_per_loop) {
  std::vector<std::unique_ptr<H2Loop>> loops;
  for (size_t i = 0; i < c.h2_links.size(); ++i) {
    if (i % links_per_loop == 0) loops.push_back(std::make_unique<H2Loop>());
    loops.back()->Add(c.h2_links[i].get(), handlers[i]);
  }
  for (auto& loop : loops) loop->Start();
  return loops;
}

void H2LinkDeleter::operator()(H2Link* link) const { delete link; }

}  // namespace inferline::loadgen
