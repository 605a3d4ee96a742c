// Batch assembly: the executor holding assemble_mu_ moves requests from the
// lock-free queues into per-priority pending lists, expires what is overdue,
// and asks DecideBatch whether to close a batch now or sleep.
//
// Wake protocol (no lost wake-ups, no lock on Submit while the assembler runs):
//   W0 (assembler): publish the wake conditions, then sleeping_ = true (release)
//   W2 (assembler): seq_cst fence; re-check the queues; wait
//   W1 (Submit):    push; seq_cst fence; read sleeping_ (acquire, W3)
//                   -> if set and the arrival meets the wake conditions: Wake()
// One of W1/W2 always sees the other's write. The wake conditions are what could
// change DecideBatch's answer before the assembler's own timer fires: enough rows
// to fill the batch or reach a preferred size, or a deadline earlier than the
// planned wake-up plus one batch's compute time. Other arrivals do not wake it,
// so a filling batch costs no wake-up per request.
#include <algorithm>

#include "model_impl.h"

namespace inferline {

namespace {
constexpr uint64_t kMaxSleepUs = 100'000;  // bounds any missed wake-up
}  // namespace

void Model::Impl::ExecutorLoop(GpuLane* lane) {
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
    AnswerWithStatus(*this, batch.withdrawn,
                     Status(StatusCode::kCancelled, context_ + ": cancelled by the caller before its batch ran"));
    AnswerWithStatus(*this, batch.late,
                     Status(StatusCode::kDeadlineExceeded,
                            context_ + ": overloaded: cannot finish before its deadline, so never computed"));
    AnswerWithStatus(*this, batch.shed,
                     Status(StatusCode::kResourceExhausted,
                            context_ + ": overloaded: shed after waiting longer than " +
                                std::to_string(config_.queue.interval_us / 1000) + " ms; retry later"));
    if (!batch.requests.empty()) RunBatch(batch, lane);
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
    const bool disciplined = config_.queue.overload != OverloadOrder::kFifo;
    // While standing, every waiting request is in pending_ (to pick the newest, shed the oldest).
    DrainQueues(stop || (standing_ && disciplined));
    const uint64_t now = clock_->NowUs();
    const uint64_t next_expiry = CollectExpired(now, &batch->expired, &batch->withdrawn);
    if (cancel) {
      CancelPending(batch);
      if (stop) return false;
      if (!batch->cancelled.empty() || !batch->expired.empty() || !batch->withdrawn.empty()) return true;
      SleepUpTo(BatchDecision::kForever);  // until released_ (Shutdown wakes us) or a late push
      continue;
    }
    if (stop) {
      if (PendingEmpty()) return false;
      TakeFront(FirstFit(config_.batching.max_batch_size), batch);
      return true;
    }
    if (UpdateStanding(now) && disciplined) {
      AssembleOverloaded(now, batch);
      if (!batch->requests.empty() || batch->HasAnswers()) return true;
    }
    if (batch->HasAnswers()) return true;
    BatchDecision d = Decide(now);
    if (d.kind == BatchDecision::Kind::kDispatch) {
      TakeFront(d.take, batch);
      return true;
    }
    // Also wake when the next pending deadline passes, so a request that can no
    // longer be served (fixed-delay mode, or outside the batch prefix) is answered
    // at its deadline rather than at the next dispatch.
    const uint64_t wait = std::min(d.wait_us, next_expiry - now);
    SleepForBatch(now, wait);
  }
}

// CoDel's test at each dispatch chance: the queue is standing once the oldest
// waiting request has waited longer than the target at every chance for a whole
// interval; it stops standing at the first chance where it has not (or nothing waits).
bool Model::Impl::UpdateStanding(uint64_t now_us) {
  uint64_t oldest = UINT64_MAX;
  for (const auto& level : pending_) {
    if (!level.empty()) oldest = std::min(oldest, level.front()->enqueue_us);
  }
  if (oldest == UINT64_MAX || now_us < oldest || now_us - oldest <= standing_target_us_) {
    above_target_ = false;
    standing_ = false;
    return false;
  }
  if (!above_target_) {
    above_target_ = true;
    above_since_us_ = now_us;
  }
  if (now_us - above_since_us_ >= config_.queue.interval_us) standing_ = true;
  return standing_;
}

void Model::Impl::AssembleOverloaded(uint64_t now_us, Batch* batch) {
  DrainQueues(true);  // this chance may be the first of the standing state
  const uint32_t max_rows = config_.batching.max_batch_size;
  const uint64_t finish = now_us + estimator_.Current().EstimateUs(max_rows) + config_.batching.deadline_slack_us;
  const bool shed_oldest = config_.queue.overload == OverloadOrder::kShedOldest;
  const uint64_t interval = config_.queue.interval_us;
  for (size_t l = 0; l < pending_.size(); ++l) {
    auto& level = pending_[l];
    auto keep = std::stable_partition(level.begin(), level.end(), [&](const Request* r) {
      const uint64_t dl = r->req.deadline_us;
      return (dl == 0 || dl >= finish) && !(shed_oldest && now_us - r->enqueue_us > interval);
    });
    for (auto it = keep; it != level.end(); ++it) {
      pending_rows_[l] -= (*it)->rows;
      const uint64_t dl = (*it)->req.deadline_us;
      (dl != 0 && dl < finish ? batch->late : batch->shed).push_back(*it);
    }
    level.erase(keep, level.end());
  }
  if (PendingEmpty()) return;
  if (shed_oldest) {
    TakeFront(FirstFit(max_rows), batch);
  } else {
    TakeNewest(max_rows, batch);
  }
}

// The newest requests whose rows fit in max_rows, highest priority first; at least one.
void Model::Impl::TakeNewest(uint32_t max_rows, Batch* batch) {
  for (size_t l = pending_.size(); l-- > 0;) {
    auto& level = pending_[l];
    while (!level.empty()) {
      Request* r = level.back();
      if (!batch->requests.empty() && batch->rows + r->rows > max_rows) return;
      level.pop_back();
      pending_rows_[l] -= r->rows;
      batch->requests.push_back(r);
      batch->rows += r->rows;
    }
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

uint64_t Model::Impl::CollectExpired(uint64_t now_us, std::vector<Request*>* out, std::vector<Request*>* withdrawn) {
  uint64_t next = UINT64_MAX;
  for (size_t l = 0; l < pending_.size(); ++l) {
    auto& level = pending_[l];
    auto live = std::stable_partition(level.begin(), level.end(), [](const Request* r) {
      return r->req.cancelled == nullptr || !r->req.cancelled->load(std::memory_order_relaxed);
    });
    for (auto it = live; it != level.end(); ++it) {
      pending_rows_[l] -= (*it)->rows;
      withdrawn->push_back(*it);
    }
    level.erase(live, level.end());
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

// Sleeps while a batch fills. Requires the view built by the last Decide().
void Model::Impl::SleepForBatch(uint64_t now_us, uint64_t wait_us) {
  const BatchPolicy& policy = config_.batching;
  uint64_t rows = 0;
  for (const PendingItem& it : view_items_) rows += it.rows;
  uint64_t need = 1;
  if (rows > 0 && rows < policy.max_batch_size) {
    need = policy.max_batch_size - rows;
    for (uint32_t p : policy.preferred_batch_sizes) {
      if (p > rows) need = std::min<uint64_t>(need, p - rows);
    }
  }
  uint64_t horizon = wait_us >= UINT64_MAX - now_us ? UINT64_MAX : now_us + wait_us;
  if (policy.mode == BatchingMode::kDeadlineAware && horizon != UINT64_MAX) {
    uint64_t ahead = estimator_.Current().EstimateUs(policy.max_batch_size) + policy.deadline_slack_us;
    horizon = ahead >= UINT64_MAX - horizon ? UINT64_MAX : horizon + ahead;
  }
  SleepUpTo(wait_us, need, horizon);
}

void Model::Impl::SleepUpTo(uint64_t wait_us, uint64_t wake_rows, uint64_t wake_deadline_before) {
  if (wait_us == 0) return;
  wake_rows_.store(wake_rows, std::memory_order_relaxed);
  wake_deadline_before_.store(wake_deadline_before, std::memory_order_relaxed);
  arrived_rows_.store(0, std::memory_order_relaxed);
  sleeping_.store(true, std::memory_order_release);  // W0, pairs with W3
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
