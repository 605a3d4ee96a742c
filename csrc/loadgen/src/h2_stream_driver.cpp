// ModelStreamInfer over HTTP/2 spoken directly with nghttp2 (driver.h, MakeH2StreamDriver): what
// stream_driver.cpp does through gRPC C-core (its slots, ids, matching, half-close at the end and
// what a stream still owed), at a fraction of the client CPU. A bidi call is one POST whose
// request body is the prefixed requests, sent as they come, and whose response body is the
// prefixed answers, then trailers with grpc-status.
//
// Threads. Stream i lives on link i % links (h2_link.h); links are served kLinksPerLoop to a loop
// thread, and everything about a stream happens on its link's thread: opening it (as the driver
// is made, as C-core's reactors are), its slot table, its queue of requests to send (nghttp2's
// data source takes as many queued requests as fit in a DATA frame; with none queued it answers
// NGHTTP2_ERR_DEFERRED, and the next Enqueue resumes it), and its answers, parsed from the DATA
// as it arrives. A closed loop runs on the loop threads alone (each answer in the window queues
// the next request on its stream). In an open loop the scheduler thread picks a stream (round
// robin, passing full or ended ones: a stream's `outstanding` counts the requests it owes, and
// only the scheduler raises it) and posts the request to that stream's link.
//
// Ids. As stream_driver.cpp: the n-th request of a stream, in slot s, carries id n * capacity + s
// (answer.h IdSuffix, after the payload in the same message); an answer without a known id takes
// the oldest outstanding request of its stream.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "answer.h"
#include "h2_link.h"

namespace inferline::loadgen {
namespace {

constexpr size_t kErrorBytes = 80;  // "STREAM: " + this much of an error_message
// Connections served by one thread. Measured (digits-mlp, 64 in flight on 8 streams over 4
// connections, 2 shared cores): a thread per connection cost 8-9 us of client CPU per request,
// one thread for the 4 connections 5-5.5 us at the same rate: each wake-up serves more answers.
constexpr size_t kLinksPerLoop = 4;

class H2StreamDriver;

class BidiStream final : public H2Stream {
 public:
  BidiStream(H2StreamDriver& d, LoadContext& c, uint32_t index, uint32_t capacity);
  uint32_t capacity() const { return capacity_; }

  // Link thread.
  void Open(H2Link& link);
  bool Enqueue(int64_t scheduled_ns);  // false: full, closing or ended (nothing sent)
  void Posted(int64_t scheduled_ns);   // open loop: a request the scheduler counted sent
  void HalfClose();
  void Cancel();
  bool closed() const { return closed_; }
  void OnData(const uint8_t* data, size_t length) override;
  void OnClose(int code) override;
  ssize_t ReadBody(uint8_t* buf, size_t length, uint32_t* flags) override;

  // Any thread.
  std::atomic<uint32_t> outstanding{0};  // open loop: posted and not yet answered
  std::atomic<bool> ended{false};

 private:
  struct Entry {
    int64_t scheduled_ns = 0;
    uint64_t seq = 0;
    bool live = false;
  };
  struct Out {
    uint32_t payload = 0;
    uint64_t id = 0;
  };
  size_t Messages(std::string_view bytes, int64_t now);  // the whole messages' bytes
  void Answered(std::string_view message, int64_t now);
  bool Take(const StreamAnswer& a, int64_t& scheduled_ns);

  H2StreamDriver& d_;
  LoadContext& c_;
  const uint32_t index_, capacity_;
  H2Link* link_ = nullptr;
  std::vector<Entry> entries_;
  std::vector<uint32_t> free_;
  uint64_t next_seq_ = 0;
  std::vector<Out> out_;              // ring of requests to send
  uint64_t out_head_ = 0, out_tail_ = 0;
  char prefix_[5] = {};               // the front request's prefix and id (once written_ > 0)
  IdSuffix suffix_{0};
  size_t written_ = 0;                // bytes of the front request handed to nghttp2
  std::string in_;                    // the start of an answer not yet whole
  bool deferred_ = false, half_close_ = false, cancelled_ = false, closed_ = false;
  std::string_view end_name_;         // once closed: what a request posted late counts as
};

// A link's streams (stream i of the driver at position i / links), driven from its thread.
class StreamLink final : public H2Handler {
 public:
  enum Signal : unsigned { kStart = 1, kClose = 2, kCancel = 4 };
  StreamLink(LoadContext& c, H2Link& link) : c_(c), link_(link) {}
  void Add(BidiStream* stream) { streams_.push_back(stream); }

  // Any thread.
  void Raise(Signal s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      signals_ |= s;
    }
    link_.Wake();
  }
  void Post(uint32_t position, int64_t scheduled_ns) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = posted_.empty();  // else a wake-up is already on its way
      posted_.push_back({position, scheduled_ns});
    }
    if (wake) link_.Wake();
  }

  void Pass(int64_t now_ns, bool stopping) override;
  void Lost() override {
    for (BidiStream* s : streams_) {
      if (!s->closed()) s->OnClose(kGrpcUnavailable);
    }
  }
  bool Idle() const override {
    return std::all_of(streams_.begin(), streams_.end(), [](const BidiStream* s) { return s->closed(); });
  }

 private:
  struct PostedRequest {
    uint32_t position;
    int64_t scheduled_ns;
  };
  LoadContext& c_;
  H2Link& link_;
  std::vector<BidiStream*> streams_;
  bool opened_ = false;               // link thread only
  unsigned done_ = 0;                 // signals acted on; link thread only
  std::vector<PostedRequest> taken_;  // link thread only
  std::mutex mu_;
  std::vector<PostedRequest> posted_;  // requires mu_
  unsigned signals_ = 0;              // requires mu_
};

class H2StreamDriver final : public Driver {
 public:
  explicit H2StreamDriver(LoadContext& c) : c_(c) {
    const std::vector<uint32_t> capacities = StreamCapacities(c);
    for (size_t i = 0; i < capacities.size(); ++i) {
      streams_.push_back(std::make_unique<BidiStream>(*this, c, static_cast<uint32_t>(i), capacities[i]));
    }
    std::vector<H2Handler*> handlers;
    for (auto& link : c.h2_links) {
      links_.push_back(std::make_unique<StreamLink>(c, *link));
      handlers.push_back(links_.back().get());
    }
    for (size_t i = 0; i < streams_.size(); ++i) links_[i % links_.size()]->Add(streams_[i].get());
    loops_ = StartLoops(c, handlers, kLinksPerLoop);  // their first pass opens the streams
  }
  ~H2StreamDriver() override {
    for (auto& loop : loops_) loop->Stop();  // cancels what is still open
  }

  void StartClosed() override {
    for (auto& link : links_) link->Raise(StreamLink::kStart);
  }

  bool TrySend(int64_t scheduled_ns) override {
    // Round robin; a full or ended stream passes its turn to the next, all full: wait.
    for (size_t tries = 0; tries < streams_.size(); ++tries) {
      const size_t i = turn_++ % streams_.size();
      BidiStream& s = *streams_[i];
      if (s.ended.load(std::memory_order_acquire)) continue;
      if (s.outstanding.load(std::memory_order_acquire) >= s.capacity()) continue;
      s.outstanding.fetch_add(1, std::memory_order_relaxed);
      c_.recorder->RecordLag(scheduled_ns, NowNs());
      c_.recorder->CountSent();
      links_[i % links_.size()]->Post(static_cast<uint32_t>(i / links_.size()), scheduled_ns);
      return true;
    }
    return false;
  }

  void Finish() override {
    for (auto& link : links_) link->Raise(StreamLink::kClose);
    const auto deadline = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(
        c_.window.measure_to_ns + static_cast<int64_t>(c_.options->timeout_s * 1e9)));
    std::unique_lock<std::mutex> lock(mu_);
    if (!all_done_.wait_until(lock, deadline, [this] { return done_ == streams_.size(); })) {
      cancelled_ = true;
      lock.unlock();
      for (auto& link : links_) link->Raise(StreamLink::kCancel);
      lock.lock();
      all_done_.wait(lock, [this] { return done_ == streams_.size(); });
    }
  }

  // A stream ended with this code: the status name its outstanding requests are counted under.
  std::string_view EndName(int code) {
    std::lock_guard<std::mutex> lock(mu_);
    return code == 0 || cancelled_ ? std::string_view("NO_ANSWER") : StatusName(code);
  }
  void StreamDone() {
    std::lock_guard<std::mutex> lock(mu_);
    if (++done_ == streams_.size()) all_done_.notify_all();
  }

 private:
  LoadContext& c_;
  std::vector<std::unique_ptr<BidiStream>> streams_;
  std::vector<std::unique_ptr<StreamLink>> links_;  // one per H2Link
  std::vector<std::unique_ptr<H2Loop>> loops_;
  size_t turn_ = 0;                   // scheduler thread only
  std::mutex mu_;
  std::condition_variable all_done_;
  size_t done_ = 0;                   // requires mu_
  bool cancelled_ = false;            // requires mu_
};

void StreamLink::Pass(int64_t now_ns, bool stopping) {
  unsigned signals;
  {
    std::lock_guard<std::mutex> lock(mu_);
    taken_.swap(posted_);
    signals = signals_ & ~done_;
  }
  done_ |= signals;
  if (!opened_) {
    opened_ = true;
    for (BidiStream* s : streams_) s->Open(link_);
  }
  if (signals & kStart) {  // closed loop: every slot's first request
    for (BidiStream* s : streams_) {
      for (uint32_t i = 0; i < s->capacity() && s->Enqueue(now_ns); ++i) c_.recorder->CountSent();
    }
  }
  for (const PostedRequest& p : taken_) streams_[p.position]->Posted(p.scheduled_ns);
  taken_.clear();
  if ((signals & kClose) || stopping) {
    for (BidiStream* s : streams_) s->HalfClose();
  }
  if ((signals & kCancel) || stopping) {
    for (BidiStream* s : streams_) s->Cancel();
  }
}

BidiStream::BidiStream(H2StreamDriver& d, LoadContext& c, uint32_t index, uint32_t capacity)
    : d_(d), c_(c), index_(index), capacity_(std::max<uint32_t>(capacity, 1)), entries_(capacity_), out_(capacity_) {
  for (uint32_t i = capacity_; i-- > 0;) free_.push_back(i);
}

void BidiStream::Open(H2Link& link) {
  link_ = &link;
  if (link.Request(c_.options->method, std::string(), this) < 0) OnClose(kGrpcUnavailable);
}

bool BidiStream::Enqueue(int64_t scheduled_ns) {
  if (closed_ || half_close_ || free_.empty()) return false;
  const uint32_t slot = free_.back();
  free_.pop_back();
  entries_[slot] = Entry{scheduled_ns, next_seq_, true};
  out_[out_tail_++ % capacity_] = Out{c_.NextPayload(), next_seq_ * capacity_ + slot};
  ++next_seq_;
  if (deferred_) {
    deferred_ = false;
    link_->ResumeData(stream_id);
  }
  return true;
}

void BidiStream::Posted(int64_t scheduled_ns) {
  if (Enqueue(scheduled_ns)) return;
  // Ended (or half-closed) since the scheduler chose it: owed at once, as its end counts it.
  const std::string_view name = closed_ ? end_name_ : std::string_view("NO_ANSWER");
  c_.recorder->Record(index_, scheduled_ns, NowNs(), Answer{name, false});
  outstanding.fetch_sub(1, std::memory_order_release);
}

void BidiStream::HalfClose() {
  if (closed_ || half_close_) return;
  half_close_ = true;
  if (deferred_) {
    deferred_ = false;
    link_->ResumeData(stream_id);  // ReadBody ends the body once the queue is sent
  }
}

void BidiStream::Cancel() {
  if (closed_ || cancelled_) return;
  cancelled_ = true;
  link_->Reset(stream_id, NGHTTP2_CANCEL);  // OnClose follows once it is sent
}

ssize_t BidiStream::ReadBody(uint8_t* buf, size_t length, uint32_t* flags) {
  size_t n = 0;
  while (n < length && out_head_ != out_tail_) {
    const Out& o = out_[out_head_ % capacity_];
    const std::string& payload = c_.options->payloads[o.payload];
    if (written_ == 0) {
      suffix_ = IdSuffix(o.id);
      PutPrefix(prefix_, static_cast<uint32_t>(payload.size() + suffix_.size));
    }
    const std::string_view parts[3] = {{prefix_, sizeof prefix_}, payload, {suffix_.bytes, suffix_.size}};
    size_t skip = written_;  // bytes of the parts already handed over
    for (const std::string_view part : parts) {
      if (skip >= part.size()) {
        skip -= part.size();
        continue;
      }
      const size_t k = std::min(part.size() - skip, length - n);
      std::memcpy(buf + n, part.data() + skip, k);
      n += k;
      written_ += k;
      skip = 0;
      if (n == length) break;
    }
    if (written_ == sizeof prefix_ + payload.size() + suffix_.size) {
      ++out_head_;
      written_ = 0;
    }
  }
  if (out_head_ == out_tail_ && half_close_) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  } else if (n == 0) {
    deferred_ = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  return static_cast<ssize_t>(n);
}

void BidiStream::OnData(const uint8_t* data, size_t length) {
  const int64_t now = NowNs();
  const std::string_view bytes(reinterpret_cast<const char*>(data), length);
  if (in_.empty()) {  // the usual case: answers read in place, only a partial one kept
    in_.assign(bytes.substr(Messages(bytes, now)));
    return;
  }
  in_.append(bytes);
  in_.erase(0, Messages(in_, now));
}

size_t BidiStream::Messages(std::string_view bytes, int64_t now) {
  size_t at = 0;
  while (bytes.size() - at >= 5) {
    uint32_t n = 0;
    for (int i = 1; i <= 4; ++i) n = n << 8 | static_cast<uint8_t>(bytes[at + i]);
    if (bytes.size() - at - 5 < n) break;
    Answered(bytes.substr(at + 5, n), now);
    at += 5 + n;
  }
  return at;
}

bool BidiStream::Take(const StreamAnswer& a, int64_t& scheduled_ns) {
  return TakeAnswered(entries_, free_, capacity_, a, scheduled_ns);
}

void BidiStream::Answered(std::string_view message, int64_t now) {
  std::string error;
  Answer answer{"OK", false};
  const StreamAnswer a = ReadStreamAnswer(message);
  if (!a.error.empty()) {
    size_t n = std::min(a.error.size(), kErrorBytes);
    while (n < a.error.size() && n > 0 && (static_cast<uint8_t>(a.error[n]) & 0xc0) == 0x80) --n;  // UTF-8
    error = "STREAM: " + std::string(a.error.substr(0, n));
    answer.status = error;
  } else {
    answer.fallback = HasFallback(message);
  }
  int64_t scheduled_ns = 0;
  if (!Take(a, scheduled_ns)) return;
  c_.recorder->Record(index_, scheduled_ns, now, answer);
  if (!c_.closed_loop()) {
    outstanding.fetch_sub(1, std::memory_order_release);
  } else if (now < c_.window.measure_to_ns && Enqueue(NowNs())) {
    c_.recorder->CountSent();
  }
}

void BidiStream::OnClose(int code) {
  closed_ = true;
  end_name_ = d_.EndName(code);
  const int64_t now = NowNs();
  for (Entry& e : entries_) {
    if (e.live) c_.recorder->Record(index_, e.scheduled_ns, now, Answer{end_name_, false});
    e.live = false;
  }
  out_head_ = out_tail_;
  written_ = 0;
  ended.store(true, std::memory_order_release);
  d_.StreamDone();
}

}  // namespace

std::unique_ptr<Driver> MakeH2StreamDriver(LoadContext& context) {
  return std::make_unique<H2StreamDriver>(context);
}

}  // namespace inferline::loadgen
