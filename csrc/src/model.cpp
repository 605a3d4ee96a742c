// Model: configuration checks, Submit, Shutdown. Assembly is in assembler.cpp,
// batch execution in executor.cpp, oversize requests in split_request.cpp.
#include <algorithm>
#include <set>

#include "model_impl.h"

namespace inferline {

uint64_t QueuePolicy::TargetUs(const BatchPolicy& batching) const noexcept {
  if (target_us != 0) return target_us;
  constexpr uint64_t kOverBatching = 5000;
  return batching.max_queue_delay_us > UINT64_MAX - kOverBatching ? UINT64_MAX
                                                                   : batching.max_queue_delay_us + kOverBatching;
}

std::string ModelConfig::Describe() const {
  return "model '" + name + "' version " + std::to_string(version);
}

namespace {

// Shape::ToString reads `rank` dims: only call it on a rank the Shape can hold.
std::string ShapeText(const Shape& s) {
  if (s.rank < 0 || s.rank > Shape::kMaxRank) return "<rank " + std::to_string(s.rank) + ">";
  return s.ToString();
}

Status CheckSpec(const TensorSpec& spec, const std::string& where) {
  if (spec.name.empty()) return InvalidArgument(where + " has an empty name");
  if (spec.shape.rank < 1 || spec.shape.rank > Shape::kMaxRank) {  // (ToString would read past dims)
    return InvalidArgument(where + " '" + spec.name + "': shape rank " + std::to_string(spec.shape.rank) +
                           " must be in [1, " + std::to_string(Shape::kMaxRank) + "]");
  }
  if (spec.shape.dims[0] != -1) {
    return InvalidArgument(where + " '" + spec.name + "': shape " + spec.shape.ToString() +
                           " must start with -1, the batch dimension");
  }
  for (int d = 1; d < spec.shape.rank; ++d) {
    if (spec.shape.dims[d] == 0 || spec.shape.dims[d] < -1) {
      return InvalidArgument(where + " '" + spec.name + "': dim " + std::to_string(d) + " of shape " +
                             spec.shape.ToString() + " must be >= 1 or -1");
    }
  }
  return Status::Ok();
}

Status CheckUniqueNames(const std::vector<TensorSpec>& specs, const std::string& where) {
  std::set<std::string> seen;
  for (const auto& s : specs) {
    if (!seen.insert(s.name).second) return InvalidArgument(where + " '" + s.name + "' is declared twice");
  }
  return Status::Ok();
}

Status CheckScheduling(const ModelConfig& c, const std::string& ctx) {
  if (c.instances < 1 || c.instances > 64) {
    return InvalidArgument(ctx + ": instances = " + std::to_string(c.instances) + " must be in [1, 64]");
  }
  if (c.queue_capacity < 1 || c.queue_capacity > kMaxQueueCapacity) {
    return InvalidArgument(ctx + ": queue_capacity = " + std::to_string(c.queue_capacity) + " must be in [1, " +
                           std::to_string(kMaxQueueCapacity) + "]");
  }
  if (c.priority_levels < 1 || c.priority_levels > 16) {
    return InvalidArgument(ctx + ": priority_levels = " + std::to_string(c.priority_levels) + " must be in [1, 16]");
  }
  if (c.queue.interval_us == 0) return InvalidArgument(ctx + ": queue.interval_us must be > 0");
  return c.batching.Validate(ctx);
}

// Validates `c` and computes the backend-facing input signature.
Expected<std::vector<TensorSpec>> ResolveConfig(ModelConfig& c) {
  const std::string ctx = c.Describe();
  if (c.name.empty()) return InvalidArgument("model config: name is empty");
  if (c.inputs.empty()) return InvalidArgument(ctx + ": declares no inputs");
  if (c.outputs.empty()) return InvalidArgument(ctx + ": declares no outputs");
  for (const auto& s : c.inputs) INFERLINE_RETURN_IF_ERROR(CheckSpec(s, ctx + ": input"));
  for (const auto& s : c.outputs) INFERLINE_RETURN_IF_ERROR(CheckSpec(s, ctx + ": output"));
  INFERLINE_RETURN_IF_ERROR(CheckUniqueNames(c.inputs, ctx + ": input"));
  INFERLINE_RETURN_IF_ERROR(CheckUniqueNames(c.outputs, ctx + ": output"));
  INFERLINE_RETURN_IF_ERROR(CheckScheduling(c, ctx));
  if (c.preprocessing.empty()) c.preprocessing.resize(c.inputs.size());
  if (c.preprocessing.size() != c.inputs.size()) {
    return InvalidArgument(ctx + ": preprocessing has " + std::to_string(c.preprocessing.size()) +
                           " entries for " + std::to_string(c.inputs.size()) + " inputs");
  }
  std::vector<TensorSpec> resolved;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    std::string where = ctx + " input '" + c.inputs[i].name + "'";
    auto r = ResolvePreprocess(c.preprocessing[i], c.inputs[i], where);
    if (!r.ok()) return r.status();
    for (int d = 1; d < r->shape.rank; ++d) {
      if (r->shape.dims[d] < 1) {
        return InvalidArgument(where + ": dim " + std::to_string(d) + " of " + c.inputs[i].shape.ToString() +
                               " is free; only dim 0 (the rows) may be -1 unless image preprocessing fixes the size");
      }
    }
    resolved.push_back(std::move(r.value()));
  }
  return resolved;
}

}  // namespace

Expected<std::unique_ptr<Model>> Model::Create(ModelConfig config, std::shared_ptr<Backend> backend, Clock* clock) {
  if (!backend) return InvalidArgument(config.Describe() + ": no backend given");
  auto resolved = ResolveConfig(config);
  if (!resolved.ok()) return resolved.status();
  INFERLINE_RETURN_IF_ERROR(CheckGpuPlacement(config, backend.get()));
  auto impl = std::make_unique<Impl>(std::move(config), std::move(resolved.value()), std::move(backend),
                                     clock != nullptr ? clock : &SteadyClock::Instance());
  INFERLINE_RETURN_IF_ERROR(impl->CreateLanes());
  impl->Start();
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() { impl_->Shutdown(true); }
Status Model::Submit(const InferRequest& request) { return impl_->Submit(request); }
void Model::Shutdown(bool drain) { impl_->Shutdown(drain); }
void Model::Wake() { impl_->Wake(); }
StatsSnapshot Model::Stats() const {
  StatsSnapshot s = impl_->stats_.Snapshot();
  s.queued_rows = impl_->unanswered_rows_.load(std::memory_order_relaxed);
  return s;
}

void Model::ResetStats() noexcept { impl_->stats_.Reset(); }
uint64_t Model::NowUs() const noexcept { return impl_->clock_->NowUs(); }
GpuMemory Model::gpu_memory() const noexcept { return impl_->gpu_memory(); }

namespace {

uint64_t SaturatingAdd(uint64_t a, uint64_t b) noexcept { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

// Compute time of `rows` rows run in batches of `max_rows` (full ones, then the rest).
uint64_t BatchesUs(const ComputeModel& m, uint64_t rows, uint32_t max_rows) noexcept {
  const uint64_t full = rows / max_rows, rest = rows % max_rows;
  uint64_t full_us = 0;
  if (__builtin_mul_overflow(full, m.EstimateUs(max_rows), &full_us)) full_us = UINT64_MAX;
  return SaturatingAdd(full_us, rest != 0 ? m.EstimateUs(static_cast<uint32_t>(rest)) : 0);
}

}  // namespace

uint64_t Model::EstimateCompletionUs(uint32_t rows) const noexcept {
  const Impl& m = *impl_;
  const ComputeModel compute{m.estimate_fixed_us_.load(std::memory_order_relaxed),
                             m.estimate_per_row_us_.load(std::memory_order_relaxed)};
  const uint32_t max_rows = std::max<uint32_t>(m.config_.batching.max_batch_size, 1);
  const uint64_t ahead = m.unanswered_rows_.load(std::memory_order_relaxed);
  const uint64_t wait_us = BatchesUs(compute, ahead, max_rows) / m.config_.instances;
  return SaturatingAdd(wait_us, BatchesUs(compute, rows, max_rows));
}
const ModelConfig& Model::config() const noexcept { return impl_->config_; }
const std::vector<TensorSpec>& Model::backend_inputs() const noexcept { return impl_->backend_inputs_; }

Model::Impl::Impl(ModelConfig config, std::vector<TensorSpec> backend_inputs, std::shared_ptr<Backend> backend,
                  Clock* clock)
    : config_(std::move(config)),
      backend_inputs_(std::move(backend_inputs)),
      context_(config_.Describe()),
      backend_(std::move(backend)),
      clock_(clock),
      stats_(config_.batching.max_batch_size),
      standing_target_us_(config_.queue.TargetUs(config_.batching)) {
  for (uint32_t l = 0; l < config_.priority_levels; ++l) {
    queues_.push_back(std::make_unique<LevelQueue>(config_.queue_capacity));
  }
  pending_.resize(config_.priority_levels);
  pending_rows_.assign(config_.priority_levels, 0);
}

Model::Impl::~Impl() { Shutdown(true); }

Status Model::Impl::CreateLanes() {
  if (!config_.gpu.enabled()) return Status::Ok();
  device_backend_ = dynamic_cast<DeviceBackend*>(backend_.get());  // CheckGpuPlacement: not null
  for (uint32_t i = 0; i < config_.instances; ++i) {
    auto lane = GpuLane::Create(config_, backend_inputs_, context_);
    if (!lane.ok()) return lane.status();
    lanes_.push_back(std::move(lane.value()));
  }
  return Status::Ok();
}

void Model::Impl::Start() {
  for (uint32_t i = 0; i < config_.instances; ++i) {
    GpuLane* lane = lanes_.empty() ? nullptr : lanes_[i].get();
    executors_.emplace_back([this, lane] { ExecutorLoop(lane); });
  }
}

GpuMemory Model::Impl::gpu_memory() const noexcept {
  GpuMemory total;
  if (!config_.gpu.enabled()) return total;
  total.device = config_.gpu.device;
  for (const auto& lane : lanes_) {
    const GpuMemory m = lane->memory();
    total.device_bytes += m.device_bytes;
    total.pinned_bytes += m.pinned_bytes;
  }
  return total;
}

Status Model::Impl::CheckRequest(const InferRequest& request, uint32_t* rows) const {
  if (request.sink == nullptr) return InvalidArgument(context_ + ": request has no completion sink");
  if (request.inputs.size() != config_.inputs.size()) {
    return InvalidArgument(context_ + ": expected " + std::to_string(config_.inputs.size()) + " inputs, got " +
                           std::to_string(request.inputs.size()));
  }
  int64_t n = -1;
  for (size_t i = 0; i < request.inputs.size(); ++i) {
    const TensorSpec& spec = config_.inputs[i];
    const TensorView& v = request.inputs[i];
    std::string where = context_ + " input '" + spec.name + "'";
    if (v.dtype != spec.dtype) {
      return InvalidArgument(where + ": expected " + DataTypeName(spec.dtype) + ", got " + DataTypeName(v.dtype));
    }
    bool shape_ok = v.shape.rank == spec.shape.rank && v.shape.dims[0] >= 1;
    for (int d = 1; shape_ok && d < v.shape.rank; ++d) {
      shape_ok = spec.shape.dims[d] == -1 ? v.shape.dims[d] >= 1 : v.shape.dims[d] == spec.shape.dims[d];
    }
    if (!shape_ok) {
      return InvalidArgument(where + ": expected shape " + spec.shape.ToString() + " with at least one row, got " +
                             ShapeText(v.shape));
    }
    if (n >= 0 && v.shape.dims[0] != n) {
      return InvalidArgument(where + ": has " + std::to_string(v.shape.dims[0]) + " rows but input '" +
                             config_.inputs[0].name + "' has " + std::to_string(n));
    }
    n = v.shape.dims[0];
    if (v.data == nullptr) return InvalidArgument(where + ": data is null");
    INFERLINE_RETURN_IF_ERROR(CheckPreprocessInput(config_.preprocessing[i], v, where));
  }
  if (n > UINT32_MAX) return InvalidArgument(context_ + ": too many rows in one request");
  *rows = static_cast<uint32_t>(n);
  return Status::Ok();
}

Status Model::Impl::Submit(const InferRequest& request) {
  // Fast refusal; Admit re-checks inside the submitters_ window. Keeping late
  // callers out of the window lets Shutdown's wait for it end under load.
  if (stopping_.load(std::memory_order_acquire)) return Unavailable(context_ + ": model is shutting down");
  uint32_t rows = 0;
  INFERLINE_RETURN_IF_ERROR(CheckRequest(request, &rows));
  if (request.deadline_us != 0 && request.deadline_us <= clock_->NowUs()) {
    stats_.AddDeadlineMissed(1);
    return Status(StatusCode::kDeadlineExceeded, context_ + ": deadline passed before the request was queued");
  }
  const uint32_t level = std::min(request.priority, config_.priority_levels - 1);
  // Allocate before admission: once slots are reserved, nothing may fail.
  std::vector<Request*> requests;
  if (rows > config_.batching.max_batch_size) {
    requests = MakeParts(request, rows);
  } else {
    requests.push_back(new Request{request, rows, 0, false});
  }
  for (Request* r : requests) r->req.priority = level;
  Status st = Admit(requests, level, rows);
  if (!st.ok()) DiscardParts(requests);
  return st;
}

namespace {

// Marks one Submit between its stop check and its last push (S1 ... S2).
class SubmitterScope {
 public:
  explicit SubmitterScope(std::atomic<int64_t>& n) : n_(n) { n_.fetch_add(1, std::memory_order_seq_cst); }  // S1
  ~SubmitterScope() { n_.fetch_sub(1, std::memory_order_release); }  // S2, pairs with D2
  SubmitterScope(const SubmitterScope&) = delete;
  SubmitterScope& operator=(const SubmitterScope&) = delete;

 private:
  std::atomic<int64_t>& n_;
};

}  // namespace

// On OK the queue owns every request (and a split request's parts may already
// be answered and freed); otherwise the caller still owns them all. Counting,
// pushing and the wake-up all happen inside the submitters_ window, so once
// Shutdown sees no submitter, every accepted request is queued and counted.
Status Model::Impl::Admit(const std::vector<Request*>& requests, uint32_t level, uint32_t rows) {
  SubmitterScope scope(submitters_);
  if (stopping_.load(std::memory_order_seq_cst)) {  // pairs with D1 in Shutdown
    return Unavailable(context_ + ": model is shutting down");
  }
  LevelQueue& queue = *queues_[level];
  if (!queue.Reserve(requests.size())) {
    stats_.AddRejected(1);
    std::string what = requests.size() == 1
                           ? "queue full"
                           : "queue has no room for the " + std::to_string(requests.size()) + " parts of a " +
                                 std::to_string(rows) + "-row request";
    return Status(StatusCode::kResourceExhausted, context_ + ": " + what + " (capacity " +
                                                      std::to_string(queue.capacity()) + " at priority " +
                                                      std::to_string(level) + ")");
  }
  stats_.AddRequests(1, rows);  // before the push: no answer can precede its count
  unanswered_rows_.fetch_add(rows, std::memory_order_relaxed);  // before the push, as the count
  const uint64_t now = clock_->NowUs();
  const uint64_t deadline_us = requests.front()->req.deadline_us;  // read before the push hands it over
  for (Request* r : requests) {
    r->enqueue_us = now;
    queue.Push(r);  // may be answered and freed from here on
  }
  NotifyAssembler(rows, deadline_us);
  return Status::Ok();
}

void Model::Impl::NotifyAssembler(uint32_t rows, uint64_t deadline_us) noexcept {
  // W1: the push above must be visible before we read sleeping_; pairs with W2.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!sleeping_.load(std::memory_order_acquire)) return;  // W3, pairs with W0: the wake conditions
  // Wake only when this arrival may change the assembler's decision: enough rows
  // to close a batch by size, or a deadline that may need an earlier close.
  // Anything else is picked up when the assembler wakes on its own timer.
  uint64_t arrived = arrived_rows_.fetch_add(rows, std::memory_order_relaxed) + rows;
  bool urgent = deadline_us != 0 && deadline_us < wake_deadline_before_.load(std::memory_order_relaxed);
  if (arrived >= wake_rows_.load(std::memory_order_relaxed) || urgent) Wake();
}

void Model::Impl::Wake() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    wake_flag_ = true;
  }
  wake_cv_.notify_all();
}

void Model::Impl::Shutdown(bool drain) {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (executors_.empty()) return;
  drain_.store(drain, std::memory_order_relaxed);
  stopping_.store(true, std::memory_order_seq_cst);  // D1
  // D2: seq_cst, so this load and the store D1 are ordered against S1 and the
  // stop check (Dekker); acquire pairs with S2, making the pushes visible.
  while (submitters_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  released_.store(true, std::memory_order_release);
  Wake();
  for (auto& t : executors_) t.join();
  executors_.clear();
}

void RecordOutcome(ModelStats& stats, const Status& status, uint64_t queue_us, uint64_t end_to_end_us) {
  switch (status.code()) {
    case StatusCode::kOk: stats.RecordRequest(queue_us, end_to_end_us); break;
    case StatusCode::kDeadlineExceeded: stats.AddDeadlineMissed(1); break;
    case StatusCode::kCancelled: stats.AddCancelled(1); break;
    case StatusCode::kResourceExhausted: stats.AddShed(1); break;  // only the queue discipline answers so
    default: stats.AddErrors(1); break;
  }
}

}  // namespace inferline
