// Unary calls for inferline_grpc_load (driver.h): a fixed set of call slots, each a reusable
// ClientUnaryReactor with its answer buffer; a call's ClientContext is made when it starts and
// dropped in OnDone (a context serves one call). Closed loop: `concurrency` slots, each
// restarting itself from OnDone while the run lasts. Open loop: `max_outstanding` slots behind a
// free list that the scheduler takes from and OnDone gives back.
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "answer.h"
#include "driver.h"
#include "tsan.h"

namespace inferline::loadgen {
namespace {

class UnaryDriver final : public Driver {
 public:
  explicit UnaryDriver(LoadContext& c) : c_(c) {
    for (const auto& channel : c.channels) stubs_.emplace_back(channel);
    const int n = c.closed_loop() ? c.options->concurrency : c.options->max_outstanding;
    for (int i = 0; i < n; ++i) {
      slots_.push_back(std::make_unique<Slot>(this, static_cast<uint32_t>(i)));
      if (!c.closed_loop()) free_.push_back(static_cast<uint32_t>(n - 1 - i));
    }
  }

  void StartClosed() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_ = slots_.size();
    }
    for (auto& slot : slots_) {
      c_.recorder->CountSent();
      Start(*slot, NowNs());
    }
  }

  bool TrySend(int64_t scheduled_ns) override {
    uint32_t index;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (free_.empty()) return false;
      index = free_.back();
      free_.pop_back();
      ++in_flight_;
    }
    c_.recorder->RecordLag(scheduled_ns, NowNs());
    c_.recorder->CountSent();
    Start(*slots_[index], scheduled_ns);
    return true;
  }

  void Finish() override {
    // Every call has a deadline (timeout_s): each ends by then.
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return in_flight_ == 0; });
  }

 private:
  struct Slot final : grpc::ClientUnaryReactor {
    Slot(UnaryDriver* d, uint32_t i) : driver(d), index(i) {}
    void OnDone(const grpc::Status& status) override {
      grpcfe::TakeOver(this);  // what Start wrote, through gRPC's (uninstrumented) threads
      driver->Done(*this, status);
    }

    UnaryDriver* driver;
    uint32_t index;
    int64_t scheduled_ns = 0;
    std::optional<grpc::ClientContext> context;
    grpc::ByteBuffer response;
  };

  void Start(Slot& slot, int64_t scheduled_ns) {
    slot.scheduled_ns = scheduled_ns;
    slot.context.emplace();
    slot.context->set_deadline(std::chrono::system_clock::now() +
                               std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                   std::chrono::duration<double>(c_.options->timeout_s)));
    Stub& stub = stubs_[slot.index % stubs_.size()];
    stub.PrepareUnaryCall(&*slot.context, c_.options->method, grpc::StubOptions(),
                          &c_.buffers[c_.NextPayload()], &slot.response, &slot);
    grpcfe::HandOff(&slot);
    slot.StartCall();
  }

  void Done(Slot& slot, const grpc::Status& status) {
    const int64_t now = NowNs();
    Answer answer{StatusName(status.error_code()), false};
    if (status.ok()) answer.fallback = HasFallback(FlatBytes(slot.response).view());
    c_.recorder->Record(slot.index, slot.scheduled_ns, now, answer);
    slot.response.Clear();
    slot.context.reset();
    if (c_.closed_loop() && now < c_.window.measure_to_ns) {
      c_.recorder->CountSent();
      Start(slot, NowNs());
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!c_.closed_loop()) free_.push_back(slot.index);
    if (--in_flight_ == 0) idle_.notify_all();
  }

  LoadContext& c_;
  std::vector<Stub> stubs_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::mutex mu_;
  std::condition_variable idle_;
  std::vector<uint32_t> free_;        // open loop; requires mu_
  size_t in_flight_ = 0;              // requires mu_
};

}  // namespace

std::unique_ptr<Driver> MakeUnaryDriver(LoadContext& context) {
  return std::make_unique<UnaryDriver>(context);
}

}  // namespace inferline::loadgen
