// Unary calls over HTTP/2 spoken directly with nghttp2 (driver.h, MakeH2UnaryDriver): gRPC's
// wire format is a POST per call (content-type application/grpc, te: trailers, grpc-timeout)
// whose body is the 5-byte prefixed message, answered by headers, the prefixed response and
// trailers with grpc-status (or headers alone: "trailers-only"). Without gRPC C-core's call
// machinery a call costs a few microseconds of client CPU, so the client is never what limits.
//
// One UnaryLink (the H2Handler of an H2Link, h2_link.h) per connection, each run by a loop
// thread of its own. The scheduler thread (open loop) hands it requests through a mutex-guarded list and
// the link's eventfd. Each call's deadline is enforced here: past timeout_s it is recorded
// DEADLINE_EXCEEDED and its stream reset. A call is recorded exactly once (answered, timed out,
// or failed with its connection) and freed once its stream has closed.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "answer.h"
#include "h2_link.h"

namespace inferline::loadgen {

namespace {

class UnaryLink;

struct H2Call final : H2Stream {
  UnaryLink* owner = nullptr;
  int64_t scheduled_ns = 0;
  int64_t deadline_ns = 0;
  const std::string* framed = nullptr;  // the prefixed request
  size_t sent = 0;
  bool recorded = false;
  bool closed = false;                   // the session is done with it
  std::string body;

  void OnData(const uint8_t* data, size_t length) override { body.append(reinterpret_cast<const char*>(data), length); }
  void OnClose(int code) override;
  ssize_t ReadBody(uint8_t* buf, size_t length, uint32_t* flags) override {
    const size_t n = std::min(length, framed->size() - sent);
    std::memcpy(buf, framed->data() + sent, n);
    sent += n;
    if (sent == framed->size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }
};

constexpr size_t kLinksPerLoop = 1;  // a thread per connection (one for all 4: within the noise)

class H2UnaryDriver;

class UnaryLink final : public H2Handler {
 public:
  UnaryLink(LoadContext& c, H2Link& link, H2UnaryDriver& driver) : c_(c), link_(link), driver_(driver) {
    const int64_t ms = std::max<int64_t>(1, static_cast<int64_t>(c_.options->timeout_s * 1000.0));
    timeout_value_ = std::to_string(std::min<int64_t>(ms, 99999999)) + "m";  // at most 8 digits
  }

  // Any thread: closed loop: calls to start; open loop: a call scheduled at scheduled_ns.
  void StartClosed(int calls) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_start_ += calls;
    }
    link_.Wake();
  }
  void Post(int64_t scheduled_ns) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      posted_.push_back(scheduled_ns);
    }
    link_.Wake();
  }

  void Pass(int64_t now_ns, bool stopping) override;
  void Lost() override;
  bool Idle() const override { return calls_.empty(); }
  int WaitMs() const override { return calls_.empty() ? 50 : 5; }  // deadlines are checked this often
  void Finish(H2Call& call, int code);

 private:
  void Submit(int64_t scheduled_ns);
  void ExpireAndFree(int64_t now);

  LoadContext& c_;
  H2Link& link_;
  H2UnaryDriver& driver_;
  std::string timeout_value_;           // grpc-timeout, e.g. "30000m"
  int restart_ = 0;                     // closed loop: calls to start after this pass
  std::deque<std::unique_ptr<H2Call>> calls_;  // start (= deadline) order; link thread only
  std::vector<int64_t> taken_;          // link thread only
  std::mutex mu_;
  std::vector<int64_t> posted_;         // requires mu_
  int closed_start_ = 0;                // requires mu_
};

class H2UnaryDriver final : public Driver {
 public:
  explicit H2UnaryDriver(LoadContext& c) : c_(c) {
    std::vector<H2Handler*> handlers;
    for (auto& link : c_.h2_links) {
      handlers_.push_back(std::make_unique<UnaryLink>(c_, *link, *this));
      handlers.push_back(handlers_.back().get());
    }
    loops_ = StartLoops(c_, handlers, kLinksPerLoop);
  }
  ~H2UnaryDriver() override {
    for (auto& loop : loops_) loop->Stop();
  }

  void StartClosed() override {
    const int n = c_.options->concurrency;
    const int links = static_cast<int>(handlers_.size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_ = n;
    }
    for (int i = 0; i < links; ++i) handlers_[i]->StartClosed(n / links + (i < n % links ? 1 : 0));
  }

  bool TrySend(int64_t scheduled_ns) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (in_flight_ >= c_.options->max_outstanding) return false;
      ++in_flight_;
    }
    c_.recorder->RecordLag(scheduled_ns, NowNs());
    c_.recorder->CountSent();
    handlers_[next_++ % handlers_.size()]->Post(scheduled_ns);
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
  std::vector<std::unique_ptr<UnaryLink>> handlers_;  // one per link
  std::vector<std::unique_ptr<H2Loop>> loops_;
  size_t next_ = 0;                     // scheduler thread only
  std::mutex mu_;
  std::condition_variable idle_;
  int in_flight_ = 0;                   // requires mu_
};

void H2Call::OnClose(int code) {
  closed = true;
  if (!recorded) owner->Finish(*this, code);
}

void UnaryLink::Submit(int64_t scheduled_ns) {
  auto call = std::make_unique<H2Call>();
  call->owner = this;
  call->scheduled_ns = scheduled_ns;
  call->deadline_ns = NowNs() + static_cast<int64_t>(c_.options->timeout_s * 1e9);
  call->framed = &c_.framed[c_.NextPayload()];
  H2Call* raw = call.get();
  calls_.push_back(std::move(call));
  if (link_.Request(c_.options->method, timeout_value_, raw) < 0) {  // refused, or the link is dead
    raw->closed = true;
    Finish(*raw, kGrpcUnavailable);
  }
}

// Records the call; in a closed loop an answer in the window starts the next one.
void UnaryLink::Finish(H2Call& call, int code) {
  call.recorded = true;
  const int64_t now = NowNs();
  Answer answer{StatusName(code), false};
  if (code == 0) {
    // the body is the 5-byte prefix and the message; fallback answers carry "fallback_reason"
    answer.fallback = HasFallback(call.body);
  }
  c_.recorder->Record(link_.index(), call.scheduled_ns, now, answer);
  if (c_.closed_loop() && now < c_.window.measure_to_ns && !link_.dead()) {
    ++restart_;
    return;
  }
  driver_.Ended();
}

void UnaryLink::Lost() {
  for (auto& call : calls_) {
    call->closed = true;
    if (!call->recorded) Finish(*call, kGrpcUnavailable);
  }
}

void UnaryLink::ExpireAndFree(int64_t now) {
  for (auto& call : calls_) {
    if (call->deadline_ns > now) break;  // deadlines follow the start order
    if (call->recorded) continue;
    Finish(*call, kGrpcDeadlineExceeded);
    if (!call->closed) link_.Reset(call->stream_id, NGHTTP2_CANCEL);
  }
  while (!calls_.empty() && calls_.front()->recorded && calls_.front()->closed) calls_.pop_front();
}

void UnaryLink::Pass(int64_t now_ns, bool) {
  int start = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    taken_.swap(posted_);
    start = closed_start_;
    closed_start_ = 0;
  }
  for (int i = 0; i < start; ++i) {
    c_.recorder->CountSent();
    Submit(now_ns);
  }
  for (int64_t scheduled : taken_) Submit(scheduled);
  taken_.clear();
  while (restart_ > 0) {  // closed loop: each answer in the window starts the next call
    --restart_;
    c_.recorder->CountSent();
    Submit(NowNs());
  }
  ExpireAndFree(NowNs());
  if (link_.dead()) calls_.clear();  // every call recorded; the session sends nothing more
}

}  // namespace

std::unique_ptr<Driver> MakeH2UnaryDriver(LoadContext& context) {
  return std::make_unique<H2UnaryDriver>(context);
}

}  // namespace inferline::loadgen
