// Private: hand-off annotations for ThreadSanitizer builds (INFERLINE_TSAN_ANNOTATIONS).
//
// The system libgrpc is not built with -fsanitize=thread, so TSan cannot see the
// synchronization by which gRPC passes work from the thread that started an operation to the
// thread that sees it complete: a call's operation and its completion-queue event (completion.h:
// HandOff on the tag when the operation starts, TakeOver when its event runs), and a slice we
// hand gRPC and it frees on its own thread (encode.cpp). Our own state is still checked (every
// other edge is a mutex, an atomic or the core's queues); only gRPC's internal races are
// suppressed (tests/tsan.supp). Elsewhere these compile to nothing.
#pragma once

#if defined(INFERLINE_TSAN_ANNOTATIONS)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace inferline::grpcfe {

inline void HandOff(const void* object) noexcept {
#if defined(INFERLINE_TSAN_ANNOTATIONS)
  __tsan_release(const_cast<void*>(object));
#else
  (void)object;
#endif
}

inline void TakeOver(const void* object) noexcept {
#if defined(INFERLINE_TSAN_ANNOTATIONS)
  __tsan_acquire(const_cast<void*>(object));
#else
  (void)object;
#endif
}

}  // namespace inferline::grpcfe
