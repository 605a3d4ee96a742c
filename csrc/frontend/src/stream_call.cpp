// ModelStreamInfer: each request an InferJob, answered as it completes (grpc_stream.py's rules),
// on an asynchronous bidirectional call (completion.h).
//
// Reads go one at a time; each message read becomes a job at once, and the next read starts
// while the work in hand (requests read and not yet written back) stays within kMaxInHand
// requests and kMaxBytesInHand bytes, so that a client that does not read its answers is held
// back by HTTP/2 flow control. At most one write is outstanding: answers queue here and are
// written one at a time. The stream ends OK once the client half-closed and every answer is
// written; UNAVAILABLE when idle for options.stream_idle_timeout_s (the frontend's watchdog calls
// CheckIdle); when the call is cancelled its queued requests are withdrawn through one shared
// flag and their late answers dropped.
//
// Lifetime: reference counted: the RPC holds one (until the done event), each operation
// outstanding one (until its event), each job one (until the core answered it), the watchdog
// one while it checks. mu_ guards the stream state; operations are started under it.
#include <chrono>
#include <cstdio>
#include <deque>
#include <vector>

#include "infer_job.h"
#include "services.h"

namespace inferline::grpcfe {

namespace {

constexpr uint32_t kMaxInHand = 1024;           // grpc_stream.MAX_STREAM_IN_FLIGHT
constexpr uint64_t kMaxBytesInHand = 16 << 20;  // grpc_stream.MAX_STREAM_BYTES

double NowS() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Seconds(double s) {  // Python's f"{s:g}"
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

}  // namespace

class StreamCall final {
 public:
  explicit StreamCall(Lane* lane)
      : shared_(lane->shared), lane_(lane), idle_s_(shared_->options.stream_idle_timeout_s) {}

  void Request() {
    ctx_.AsyncNotifyWhenDone(done_.tag());
    Lane* lane = lane_;
    if (!shared_->gate.Run([&] {
          lane->inference->RequestModelStreamInfer(&ctx_, &stream_, lane->cq.get(), lane->cq.get(), requested_.tag());
        })) {
      Unref();
    }
  }

  void OnRequested(bool ok) {
    if (!ok) {  // the server is shutting down: no call came, and no done event will
      Unref();
      return;
    }
    RequestModelStreamInfer(lane_);
    const uint32_t max = shared_->options.max_streams;
    const uint32_t open = shared_->open_streams.fetch_add(1);
    std::lock_guard<std::mutex> lock(mu_);
    if (open >= max) {
      shared_->open_streams.fetch_sub(1);
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "ModelStreamInfer: this worker has " + std::to_string(open) +
                                    " streams open, its limit (--max-streams); retry later, or send unary ModelInfer calls"));
      return;
    }
    counted_ = true;
    if (idle_s_ > 0) {
      std::lock_guard<std::mutex> streams(shared_->streams_mu_);
      shared_->streams.insert(this);
    }
    last_active_s_ = NowS();
    StartReadLocked();
  }

  void OnRead(bool ok) {
    if (!ok) {  // half-closed (or broken, or cancelled)
      {
        std::lock_guard<std::mutex> lock(mu_);
        reads_done_ = true;
        MaybeFinishLocked();
      }
      Unref();  // the read's
      return;
    }
    grpc::ByteBuffer raw;
    raw.Swap(&read_buf_);
    const size_t bytes = raw.Length();
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++in_hand_;
      bytes_in_hand_ += bytes;
      last_active_s_ = NowS();
    }
    auto* job = new Job(shared_, this, bytes);
    job->Run(raw, ctx_.deadline());
    job->Unref();  // the reader's reference
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!finished_) {
        if (RoomLocked()) {
          StartReadLocked();
        } else {
          read_paused_ = true;
        }
      }
    }
    Unref();  // the read's
  }

  void OnWrite(bool ok) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --in_hand_;
      bytes_in_hand_ -= queue_.front().bytes;
      queue_.pop_front();
      writing_ = false;
      last_active_s_ = NowS();
      if (!finished_) {
        if (!ok) {  // the stream broke
          FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
        } else {
          if (!queue_.empty()) StartWriteLocked();
          if (read_paused_ && !reads_done_ && RoomLocked()) {
            read_paused_ = false;
            StartReadLocked();
          }
          MaybeFinishLocked();
        }
      }
    }
    Unref();  // the write's
  }

  void OnFinished(bool) { Unref(); }

  void OnDone(bool) {
    if (ctx_.IsCancelled()) {
      cancelled_.store(true, std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(mu_);
      if (!finished_) DropLocked();  // nothing more is sent
    }
    if (counted_) {
      {
        std::lock_guard<std::mutex> lock(shared_->streams_mu_);
        shared_->streams.erase(this);
      }
      shared_->open_streams.fetch_sub(1);
    }
    Unref();  // the RPC's
  }

  // A job's answer (the serialized ModelStreamInferResponse).
  void Enqueue(grpc::ByteBuffer body, size_t request_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) {
      --in_hand_;
      bytes_in_hand_ -= request_bytes;
      return;
    }
    const size_t answer_bytes = body.Length();
    bytes_in_hand_ += answer_bytes;
    queue_.push_back(Pending{std::move(body), request_bytes + answer_bytes});
    if (!writing_) StartWriteLocked();
  }

  // The watchdog: ends the stream UNAVAILABLE when idle (grpc_stream.Stream._watch).
  void CheckIdle(double now_s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    const std::string why = " for " + Seconds(idle_s_) + " s; stream closed (--stream-idle-timeout)";
    if (writing_ && now_s - writing_since_s_ >= idle_s_) {
      // The status goes out behind the answer being written (HTTP/2 keeps a stream's order), as
      // the Python frontend's: the client reads what it was sent, then the reason. The answers
      // still queued are dropped.
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "ModelStreamInfer: an answer went unread" + why));
    } else if (!writing_ && in_hand_ == 0 && now_s - last_active_s_ >= idle_s_) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "ModelStreamInfer: no request" + why));
    }
  }

  const std::atomic<bool>* cancelled() const noexcept { return &cancelled_; }
  void Ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 private:
  // One request of the stream; its answer goes to the stream's write queue.
  class Job final : public InferJob {
   public:
    Job(std::shared_ptr<Shared> shared, StreamCall* stream, size_t bytes)
        : InferJob(std::move(shared), Protocol::kStream, stream->cancelled()), stream_(stream), bytes_(bytes) {
      stream_->Ref();
    }

   private:
    ~Job() override { stream_->Unref(); }
    void Reply(Answer answer) noexcept override { stream_->Enqueue(std::move(answer.body), bytes_); }
    StreamCall* const stream_;
    const size_t bytes_;
  };

  struct Pending {
    grpc::ByteBuffer body;
    size_t bytes;  // the request's and the answer's, counted in bytes_in_hand_
  };

  ~StreamCall() = default;

  // Requires mu_.
  bool RoomLocked() const noexcept {
    return in_hand_ < kMaxInHand && (in_hand_ == 0 || bytes_in_hand_ < kMaxBytesInHand);
  }
  // Each start below runs while the caller holds another reference (the RPC's, an event's, a
  // job's or the watchdog's), so a start Shutdown's gate refuses drops its own without freeing.
  void StartReadLocked() {
    Ref();
    if (!shared_->gate.Run([&] { stream_.Read(&read_buf_, read_.tag()); })) refs_.fetch_sub(1);
  }
  void StartWriteLocked() {
    writing_ = true;
    writing_since_s_ = NowS();
    Ref();
    if (!shared_->gate.Run([&] { stream_.Write(queue_.front().body, write_.tag()); })) refs_.fetch_sub(1);
  }
  void MaybeFinishLocked() {
    if (!finished_ && reads_done_ && in_hand_ == 0) FinishLocked(grpc::Status::OK);
  }
  void FinishLocked(const grpc::Status& status) {
    DropLocked();
    Ref();
    if (!shared_->gate.Run([&] { stream_.Finish(status, finish_.tag()); })) refs_.fetch_sub(1);
  }
  // No more is sent: the answers not yet being written are dropped (the one being written
  // completes on its own).
  void DropLocked() {
    finished_ = true;
    while (queue_.size() > (writing_ ? 1u : 0u)) {
      --in_hand_;
      bytes_in_hand_ -= queue_.back().bytes;
      queue_.pop_back();
    }
  }

  const std::shared_ptr<Shared> shared_;
  Lane* const lane_;  // on the lane's thread only
  const double idle_s_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{&ctx_};
  std::atomic<int> refs_{1};
  std::atomic<bool> cancelled_{false};  // InferRequest::cancelled of every job of the stream
  bool counted_ = false;                // in open_streams (set on the lane's thread before any read)
  grpc::ByteBuffer read_buf_;           // the read outstanding
  std::mutex mu_;
  std::deque<Pending> queue_;           // answers to write; front is being written; requires mu_
  bool writing_ = false, reads_done_ = false, read_paused_ = false, finished_ = false;  // require mu_
  uint32_t in_hand_ = 0;                // read and not yet written (or dropped); requires mu_
  uint64_t bytes_in_hand_ = 0;          // requires mu_
  double last_active_s_ = 0, writing_since_s_ = 0;  // requires mu_
  On<StreamCall, &StreamCall::OnRequested> requested_{this};
  On<StreamCall, &StreamCall::OnRead> read_{this};
  On<StreamCall, &StreamCall::OnWrite> write_{this};
  On<StreamCall, &StreamCall::OnFinished> finish_{this};
  On<StreamCall, &StreamCall::OnDone> done_{this};
};

void RequestModelStreamInfer(Lane* lane) { (new StreamCall(lane))->Request(); }

void CheckIdleStreams(Shared& shared) {
  std::vector<StreamCall*> open;
  {
    std::lock_guard<std::mutex> lock(shared.streams_mu_);
    for (StreamCall* s : shared.streams) {
      s->Ref();
      open.push_back(s);
    }
  }
  const double now = NowS();
  for (StreamCall* s : open) {
    s->CheckIdle(now);
    s->Unref();
  }
}

}  // namespace inferline::grpcfe
