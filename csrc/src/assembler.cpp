// Batch assembly: the executor holding assemble_mu_ moves requests from the
// lock-free queues into per-priority pending lists, expires what is overdue,
// and asks DecideBatch whether to close a batch now or sleep.
//
// Wake protocol (no lost wake-ups, no lock on Submit while the assembler runs):
//   W1 (Submit):    push; seq_cst fence; read sleeping_      -> Wake() if set
//   W2 (assembler): sleeping_ = true; seq_cst fence; re-check the queues; wait
// One of the two sides always sees the other's write.
#include <algorithm>

#include "model_impl.h"

namespace inferline {

namespace {
constexpr uint64_t kMaxSleepUs = 100'000;  // bounds any missed wake-up
}  // namespace

void Model::Impl::ExecutorLoop() {
  Batch batch;
  for (;;) {
    bool more;
    {
      std::lock_guard<std::mutex> lock(assemble_mu_);
      more = Assemble(&batch);
    }
    // Answers are delivered outside the assembler lock.
    AnswerWithStatus(*this, batch.expired,
                     Status(StatusCode::kDeadlineExceeded, context_ + ": deadline passed while queued"));
    AnswerWithStatus(*this, batch.cancelled,
                     Status(StatusCode::kCancelled, context_ + ": cancelled by shutdown"));
    if (!batch.requests.empty()) RunBatch(batch);
    batch.Clear();
    if (!more) return;
  }
}

// Fills `batch` with requests to run and/or answer. Returns false when this
// executor should exit (shutdown and nothing left).
bool Model::Impl::Assemble(Batch* batch) {
  for (;;) {
    const bool stop = released_.load(std::memory_order_acquire);
    // Shutdown(false) has begun: start nothing new, even before released_ (drain_
    // is written before stopping_, so it is visible once stopping_ is).
    const bool cancel = (stop || stopping_.load(std::memory_order_acquire)) && !drain_.load(std::memory_order_relaxed);
    DrainQueues(stop);
    const uint64_t now = clock_->NowUs();
    const uint64_t next_expiry = CollectExpired(now, &batch->expired);
    if (cancel) {
      CancelPending(batch);
      if (stop) return false;
      if (!batch->cancelled.empty() || !batch->expired.empty()) return true;
      SleepUpTo(BatchDecision::kForever);  // until released_ (Shutdown wakes us) or a late push
      continue;
    }
    if (stop) {
      if (PendingEmpty()) return false;
      TakeFront(FirstFit(config_.batching.max_batch_size), batch);
      return true;
    }
    if (!batch->expired.empty()) return true;
    BatchDecision d = Decide(now);
    if (d.kind == BatchDecision::Kind::kDispatch) {
      TakeFront(d.take, batch);
      return true;
    }
    // Also wake when the next pending deadline passes, so a request that can no
    // longer be served (fixed-delay mode, or outside the batch prefix) is answered
    // at its deadline rather than at the next dispatch.
    SleepUpTo(std::min(d.wait_us, next_expiry - now));
  }
}

void Model::Impl::CancelPending(Batch* batch) {
  for (auto& level : pending_) {
    batch->cancelled.insert(batch->cancelled.end(), level.begin(), level.end());
    level.clear();
  }
  std::fill(pending_rows_.begin(), pending_rows_.end(), 0);
}

void Model::Impl::DrainQueues(bool unbounded) {
  const uint32_t bound = config_.batching.max_batch_size;
  for (size_t l = 0; l < queues_.size(); ++l) {
    Request* r;
    while ((unbounded || pending_rows_[l] < bound) && queues_[l]->Pop(r)) {
      pending_[l].push_back(r);
      pending_rows_[l] += r->rows;
    }
  }
}

uint64_t Model::Impl::CollectExpired(uint64_t now_us, std::vector<Request*>* out) {
  uint64_t next = UINT64_MAX;
  for (size_t l = 0; l < pending_.size(); ++l) {
    auto& level = pending_[l];
    auto keep = std::stable_partition(level.begin(), level.end(), [&](const Request* r) {
      const uint64_t dl = r->req.deadline_us;
      if (dl != 0 && dl > now_us) next = std::min(next, dl);
      return dl == 0 || dl > now_us;
    });
    for (auto it = keep; it != level.end(); ++it) {
      pending_rows_[l] -= (*it)->rows;
      out->push_back(*it);
    }
    level.erase(keep, level.end());
  }
  return next;
}

bool Model::Impl::PendingEmpty() const {
  for (const auto& level : pending_) {
    if (!level.empty()) return false;
  }
  return true;
}

// Number of requests from the front (dispatch order) whose rows fit in max_rows;
// at least one.
size_t Model::Impl::FirstFit(uint32_t max_rows) const {
  size_t n = 0;
  uint32_t rows = 0;
  for (size_t l = pending_.size(); l-- > 0;) {
    for (const Request* r : pending_[l]) {
      if (n > 0 && rows + r->rows > max_rows) return n;
      rows += r->rows;
      ++n;
    }
  }
  return n;
}

BatchDecision Model::Impl::Decide(uint64_t now_us) {
  view_items_.clear();
  uint64_t oldest = UINT64_MAX;
  uint32_t rows = 0;
  const uint32_t max_rows = config_.batching.max_batch_size;
  for (size_t l = pending_.size(); l-- > 0;) {
    if (!pending_[l].empty()) oldest = std::min(oldest, pending_[l].front()->enqueue_us);
    for (const Request* r : pending_[l]) {
      if (rows > max_rows) break;  // the view may stop after the first request that does not fit
      view_items_.push_back(PendingItem{r->rows, r->enqueue_us, r->req.deadline_us});
      rows += r->rows;
    }
  }
  PendingView view{view_items_.data(), view_items_.size(), oldest == UINT64_MAX ? 0 : oldest};
  return DecideBatch(view, config_.batching, now_us, estimator_.Current());
}

void Model::Impl::TakeFront(size_t count, Batch* batch) {
  for (size_t l = pending_.size(); l-- > 0 && count > 0;) {
    auto& level = pending_[l];
    while (!level.empty() && count > 0) {
      Request* r = level.front();
      level.pop_front();
      pending_rows_[l] -= r->rows;
      batch->requests.push_back(r);
      batch->rows += r->rows;
      --count;
    }
  }
}

void Model::Impl::SleepUpTo(uint64_t wait_us) {
  if (wait_us == 0) return;
  sleeping_.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // W2, pairs with W1
  bool has_work = released_.load(std::memory_order_acquire);
  for (const auto& q : queues_) has_work = has_work || q->size() > 0;
  if (!has_work) {
    std::unique_lock<std::mutex> lock(wake_mu_);
    wake_cv_.wait_for(lock, std::chrono::microseconds(std::min(wait_us, kMaxSleepUs)),
                      [this] { return wake_flag_; });
    wake_flag_ = false;
  }
  sleeping_.store(false, std::memory_order_relaxed);
}

}  // namespace inferline
