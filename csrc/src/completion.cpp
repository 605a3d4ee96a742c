#include "inferline/completion.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace inferline {

void CallbackSink::Deliver(InferResult* results, size_t count) noexcept {
  for (size_t i = 0; i < count; ++i) fn_(std::move(results[i]));
}

PollableSink::PollableSink() {
  fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

PollableSink::~PollableSink() {
  if (fd_ >= 0) ::close(fd_);
}

void PollableSink::Deliver(InferResult* results, size_t count) noexcept {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_empty = ready_.empty();
    for (size_t i = 0; i < count; ++i) ready_.push_back(std::move(results[i]));
  }
  // One write per batch, and none while the consumer has not drained yet.
  if (was_empty && count > 0) {
    uint64_t one = 1;
    ssize_t n;
    do {
      n = ::write(fd_, &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
  }
}

size_t PollableSink::Drain(std::vector<InferResult>* out) {
  uint64_t counter;
  // Clear the signal first: a Deliver racing with us then signals again.
  while (::read(fd_, &counter, sizeof(counter)) < 0 && errno == EINTR) {
  }
  std::vector<InferResult> taken;
  {
    std::lock_guard<std::mutex> lock(mu_);
    taken.swap(ready_);
  }
  size_t n = taken.size();
  if (out->empty()) {
    out->swap(taken);
  } else {
    for (auto& r : taken) out->push_back(std::move(r));
  }
  return n;
}

bool PollableSink::WaitReadable(int timeout_ms) const noexcept {
  pollfd p{fd_, POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, timeout_ms);
  } while (rc < 0 && errno == EINTR);
  return rc > 0 && (p.revents & POLLIN);
}

PromiseSink* PromiseSink::Create(std::future<InferResult>* future) noexcept {
  PromiseSink* sink = nullptr;
  try {
    sink = new PromiseSink();
    *future = sink->promise_.get_future();
    return sink;
  } catch (...) {  // bad_alloc (the sink, or the promise's shared state)
    delete sink;
    return nullptr;
  }
}

void PromiseSink::Deliver(InferResult* results, size_t count) noexcept {
  try {
    if (count > 0) {
      promise_.set_value(std::move(results[0]));
    } else {
      InferResult none;
      none.status = Status(StatusCode::kInternal, "PromiseSink: delivered no result");
      promise_.set_value(std::move(none));
    }
  } catch (...) {  // std::future_error cannot happen (one set); bad_alloc copying the Status
  }
  delete this;
}

void PromiseSink::Abandon() noexcept { delete this; }

}  // namespace inferline
