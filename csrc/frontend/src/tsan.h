// Private: hand-off annotations for ThreadSanitizer builds (INFERLINE_TSAN_ANNOTATIONS).
//
// The system libgrpc is not built with -fsanitize=thread, so TSan cannot see the
// synchronization by which gRPC passes a call from the thread that started an operation
// (StartRead, StartWrite, Finish, returning a reactor) to the thread that runs its reaction
// (OnReadDone, OnWriteDone, OnCancel, OnDone). Each reactor marks that edge itself: HandOff(this)
// just before every such operation and at the end of every reaction (Reaction), TakeOver(this)
// first thing in every reaction. Our own
// state is still checked (every other edge is a mutex, an atomic or the core's queues); only
// gRPC's internal races are suppressed (tests/tsan.supp). Elsewhere these compile to nothing.
#pragma once

#if defined(INFERLINE_TSAN_ANNOTATIONS)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace inferline::grpcfe {

inline void HandOff(const void* reactor) noexcept {
#if defined(INFERLINE_TSAN_ANNOTATIONS)
  __tsan_release(const_cast<void*>(reactor));
#else
  (void)reactor;
#endif
}

inline void TakeOver(const void* reactor) noexcept {
#if defined(INFERLINE_TSAN_ANNOTATIONS)
  __tsan_acquire(const_cast<void*>(reactor));
#else
  (void)reactor;
#endif
}

// TakeOver on entry and HandOff on exit, for every reaction but OnDone (the last one, which
// frees the reactor): what a reaction did happens before the reactions that follow it.
class Reaction {
 public:
  explicit Reaction(const void* reactor) noexcept : reactor_(reactor) { TakeOver(reactor); }
  ~Reaction() { HandOff(reactor_); }
  Reaction(const Reaction&) = delete;
  Reaction& operator=(const Reaction&) = delete;

 private:
  const void* reactor_;
};

}  // namespace inferline::grpcfe
