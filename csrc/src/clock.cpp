#include "inferline/clock.h"

#include <chrono>

namespace inferline {

uint64_t SteadyClock::NowUs() const noexcept {
  auto d = std::chrono::steady_clock::now().time_since_epoch();
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
}

SteadyClock& SteadyClock::Instance() noexcept {
  static SteadyClock clock;
  return clock;
}

}  // namespace inferline
