// ModelStreamInfer for inferline_grpc_load (driver.h): `streams` bidi reactors spread over the
// channels, each with a table of `capacity` request slots (closed loop: its share of
// `concurrency`; open loop: its share of `max_outstanding`).
//
// Ids. A request in slot s, the n-th request of its stream, carries id n * capacity + s (appended
// to its bytes, answer.h IdSuffix): an answer echoing it finds its slot in O(1) and a stale or
// foreign id is told apart by n. An answer with no known id takes the oldest outstanding request
// of its stream (a scan: only refusals before decoding come without an id).
//
// Writes. One write at a time per stream (the callback API's rule): requests queue in a ring of
// slot numbers; OnWriteDone writes the next. Once the run's sending ends, Close() half-closes
// each stream after its queue drains; the server then ends it once it has answered everything.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <string>

#include "answer.h"
#include "driver.h"

namespace inferline::loadgen {
namespace {

constexpr size_t kErrorBytes = 80;  // "STREAM: " + this much of an error_message

class StreamDriver;

class Stream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  Stream(StreamDriver& d, LoadContext& c, uint32_t index, uint32_t capacity);
  void Open(Stub& stub);
  bool Enqueue(int64_t scheduled_ns, bool open_loop);  // false: full or ended, nothing sent
  void Close();
  void Cancel() { context_.TryCancel(); }
  uint32_t capacity() const { return capacity_; }

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  struct Entry {
    int64_t scheduled_ns = 0;
    uint64_t seq = 0;
    uint32_t payload = 0;
    bool live = false;
  };
  void PrepareWrite(uint32_t slot);  // requires mu_
  bool Take(const StreamAnswer& a, int64_t& scheduled_ns);  // requires mu_

  StreamDriver& d_;
  LoadContext& c_;
  const uint32_t index_, capacity_;
  grpc::ClientContext context_;
  grpc::ByteBuffer write_buf_, read_buf_;
  std::mutex mu_;
  std::vector<Entry> entries_;        // requires mu_
  std::vector<uint32_t> free_;        // requires mu_
  std::vector<uint32_t> queue_;       // ring of slots to write; requires mu_
  uint64_t queue_head_ = 0, queue_tail_ = 0, next_seq_ = 0;  // requires mu_
  bool writing_ = false, closing_ = false, writes_done_ = false, broken_ = false;  // requires mu_
};

class StreamDriver final : public Driver {
 public:
  explicit StreamDriver(LoadContext& c) : c_(c) {
    const std::vector<uint32_t> capacities = StreamCapacities(c);
    for (size_t i = 0; i < capacities.size(); ++i) {
      streams_.push_back(std::make_unique<Stream>(*this, c, static_cast<uint32_t>(i), capacities[i]));
    }
    for (const auto& channel : c.channels) stubs_.emplace_back(channel);
    for (auto& s : streams_) s->Open(stubs_[(&s - &streams_[0]) % stubs_.size()]);
  }

  void StartClosed() override {
    for (auto& s : streams_) {
      for (uint32_t i = 0; i < s->capacity(); ++i) s->Enqueue(NowNs(), false);
    }
  }

  bool TrySend(int64_t scheduled_ns) override {
    // Round robin; a full stream passes its turn to the next, all full: wait.
    for (size_t tries = 0; tries < streams_.size(); ++tries) {
      Stream& s = *streams_[turn_++ % streams_.size()];
      if (s.Enqueue(scheduled_ns, true)) return true;
    }
    return false;
  }

  void Finish() override {
    for (auto& s : streams_) s->Close();
    const auto deadline = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(
        c_.window.measure_to_ns + static_cast<int64_t>(c_.options->timeout_s * 1e9)));
    std::unique_lock<std::mutex> lock(mu_);
    if (!all_done_.wait_until(lock, deadline, [this] { return done_ == streams_.size(); })) {
      cancelled_ = true;
      lock.unlock();
      for (auto& s : streams_) s->Cancel();
      lock.lock();
      all_done_.wait(lock, [this] { return done_ == streams_.size(); });
    }
  }

  // A stream's OnDone: the status name its outstanding requests are counted under.
  std::string_view Ended(const grpc::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    return status.ok() || cancelled_ ? std::string_view("NO_ANSWER") : StatusName(status.error_code());
  }
  void StreamDone() {
    std::lock_guard<std::mutex> lock(mu_);
    if (++done_ == streams_.size()) all_done_.notify_all();
  }

 private:
  LoadContext& c_;
  std::vector<Stub> stubs_;
  std::vector<std::unique_ptr<Stream>> streams_;
  size_t turn_ = 0;                   // scheduler thread only
  std::mutex mu_;
  std::condition_variable all_done_;
  size_t done_ = 0;                   // requires mu_
  bool cancelled_ = false;            // requires mu_
};

Stream::Stream(StreamDriver& d, LoadContext& c, uint32_t index, uint32_t capacity)
    : d_(d), c_(c), index_(index), capacity_(std::max<uint32_t>(capacity, 1)),
      entries_(capacity_), queue_(capacity_) {
  for (uint32_t i = capacity_; i-- > 0;) free_.push_back(i);
}

void Stream::Open(Stub& stub) {
  stub.PrepareBidiStreamingCall(&context_, c_.options->method, grpc::StubOptions(), this);
  StartRead(&read_buf_);
  StartCall();
}

bool Stream::Enqueue(int64_t scheduled_ns, bool open_loop) {
  const uint32_t payload = c_.NextPayload();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_ || free_.empty()) return false;
    const uint32_t slot = free_.back();
    free_.pop_back();
    entries_[slot] = Entry{scheduled_ns, next_seq_++, payload, true};
    queue_[queue_tail_++ % capacity_] = slot;
    if (open_loop) c_.recorder->RecordLag(scheduled_ns, NowNs());
    c_.recorder->CountSent();
    if (writing_ || broken_) return true;  // written after the write in progress (or owed at OnDone)
    writing_ = true;
    PrepareWrite(queue_[queue_head_++ % capacity_]);
  }
  StartWrite(&write_buf_);
  return true;
}

void Stream::PrepareWrite(uint32_t slot) {
  const Entry& e = entries_[slot];
  const IdSuffix id(e.seq * capacity_ + slot);
  grpc::Slice parts[2] = {c_.payloads[e.payload], grpc::Slice(id.bytes, id.size)};
  write_buf_ = grpc::ByteBuffer(parts, 2);
}

void Stream::OnWriteDone(bool ok) {
  bool again = false, writes_done = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) {
      broken_ = true;  // the stream is ending: OnDone counts what it owes
      writing_ = false;
    } else if (queue_head_ != queue_tail_) {
      PrepareWrite(queue_[queue_head_++ % capacity_]);
      again = true;
    } else {
      writing_ = false;
      writes_done = closing_ && !writes_done_;
      writes_done_ = writes_done_ || writes_done;
    }
  }
  if (again) StartWrite(&write_buf_);
  if (writes_done) StartWritesDone();
}

void Stream::Close() {
  bool writes_done = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    writes_done = !writing_ && !writes_done_ && !broken_;
    writes_done_ = writes_done_ || writes_done;
  }
  if (writes_done) StartWritesDone();
}

bool Stream::Take(const StreamAnswer& a, int64_t& scheduled_ns) {
  return TakeAnswered(entries_, free_, capacity_, a, scheduled_ns);
}

void Stream::OnReadDone(bool ok) {
  if (!ok) return;  // the stream ends: OnDone follows
  const int64_t now = NowNs();
  std::string error;
  Answer answer{"OK", false};
  int64_t scheduled_ns = 0;
  bool matched;
  {
    const FlatBytes flat(read_buf_);
    const StreamAnswer a = ReadStreamAnswer(flat.view());
    if (!a.error.empty()) {
      size_t n = std::min(a.error.size(), kErrorBytes);
      while (n < a.error.size() && n > 0 && (static_cast<uint8_t>(a.error[n]) & 0xc0) == 0x80) --n;  // UTF-8
      error = "STREAM: " + std::string(a.error.substr(0, n));
      answer.status = error;
    } else {
      answer.fallback = HasFallback(flat.view());
    }
    std::lock_guard<std::mutex> lock(mu_);
    matched = Take(a, scheduled_ns);
  }
  read_buf_.Clear();
  StartRead(&read_buf_);
  if (!matched) return;
  c_.recorder->Record(index_, scheduled_ns, now, answer);
  if (c_.closed_loop() && now < c_.window.measure_to_ns) Enqueue(NowNs(), false);
}

void Stream::OnDone(const grpc::Status& status) {
  const std::string_view name = d_.Ended(status);
  const int64_t now = NowNs();
  std::vector<int64_t> owed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    broken_ = true;  // the call is gone: Close must not start a WritesDone on it
    for (Entry& e : entries_) {
      if (e.live) owed.push_back(e.scheduled_ns);
      e.live = false;
    }
  }
  for (int64_t scheduled_ns : owed) c_.recorder->Record(index_, scheduled_ns, now, Answer{name, false});
  d_.StreamDone();
}

}  // namespace

std::unique_ptr<Driver> MakeStreamDriver(LoadContext& context) {
  return std::make_unique<StreamDriver>(context);
}

}  // namespace inferline::loadgen
