// inferline/mpmc_queue.h — bounded, lock-free multi-producer multi-consumer queue.
//
// MpmcQueue<T> hands requests between the frontend threads and the batching
// workers. It holds at most `capacity` items (fixed at construction, never
// grows), takes no lock and never blocks: try_push on a full queue and try_pop
// on an empty one return false at once, so callers pick their own back-off.
// Only the constructor allocates or throws; every other call is noexcept.
// Because nothing waits, a try call may also fail while the one slot it needs
// is mid-handoff in another thread (an item being moved out, or one being
// constructed); callers retry exactly as for a full or empty queue.
//
//   MpmcQueue<RequestPtr> q(1024);
//   if (!q.try_push(std::move(req))) { /* full: reject with kResourceExhausted */ }
//   RequestPtr r;
//   while (q.try_pop(r)) { /* ... */ }
//
// A power-of-two capacity maps tickets to slots with a mask; any other capacity
// costs one integer division per call.
//
// ---- Protocol ---------------------------------------------------------------
// Tickets: `tail_` is the next push ticket, `head_` the next pop ticket; both
// only grow. Ticket t lives in slot t % capacity. Each slot's `seq` says which
// ticket may touch it next and whether it is full:
//   seq == 2*t      slot is empty and ready for push ticket t
//   seq == 2*t + 1  slot holds the item of ticket t, ready for pop ticket t
// (Doubling keeps "full for t" and "empty for t + capacity" distinct even when
// capacity is 1. 64-bit tickets would take centuries to wrap.)
//
// Producer (try_push):
//   P1  load tail_ (relaxed): a guess at the next ticket t; carries no data.
//   P2  load slot.seq (acquire), pairs with C5: when it reads 2*t, the previous
//       occupant's move-out and destruction happened-before our placement new.
//   P3  CAS tail_ t -> t+1 (relaxed): claims ticket t. RMW atomicity alone
//       makes tickets unique; no data travels through tail_.
//   P4  (seq < 2*t: the slot is still in use from the previous lap) reload
//       tail_ (relaxed); unchanged means full -> return false, never wait.
//   P5  construct the item, then store slot.seq = 2*t+1 (release), pairs with
//       C2: publishes the item to the consumer that claims ticket t.
// Consumer (try_pop):
//   C1  load head_ (relaxed): a guess at the next ticket h; carries no data.
//   C2  load slot.seq (acquire), pairs with P5: when it reads 2*h+1, the item
//       constructed by the producer of ticket h is visible.
//   C3  CAS head_ h -> h+1 (relaxed): claims ticket h (uniqueness by RMW).
//   C4  (seq < 2*h+1: the item is not published yet) reload head_ (relaxed);
//       unchanged means empty -> return false, never wait.
//   C5  move the item out and destroy it, then store slot.seq =
//       2*(h+capacity) (release), pairs with P2: hands the slot to the
//       producer of ticket h+capacity.
// size():
//   S1  load head_ (relaxed), S2  load tail_ (relaxed): a snapshot that may be
//       stale or torn; clamped to [0, capacity].
// A seq larger than expected (in P2 or C2) means another thread already took
// our guessed ticket: reload the ticket (P1 / C1) and retry.
// -----------------------------------------------------------------------------
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace inferline {

template <class T, template <class> class Atom = std::atomic>
class MpmcQueue {
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "MpmcQueue<T>: T must be nothrow move constructible");
  static_assert(std::is_nothrow_move_assignable_v<T>,
                "MpmcQueue<T>: T must be nothrow move assignable (try_pop assigns)");
  static_assert(std::is_nothrow_destructible_v<T>,
                "MpmcQueue<T>: T must be nothrow destructible");

 public:
  static constexpr size_t kCacheLineBytes = 64;

  explicit MpmcQueue(size_t capacity)
      : capacity_(CheckedCapacity(capacity)),
        mask_(capacity_ - 1),
        is_pow2_((capacity_ & mask_) == 0),
        slots_(new Slot[capacity_]) {
    // Not yet shared with other threads: relaxed is enough.
    for (size_t i = 0; i < capacity_; ++i) {
      slots_[i].seq.store(2 * i, std::memory_order_relaxed);
    }
  }

  ~MpmcQueue() {
    // No concurrent callers by now; an odd seq marks a slot still holding an item.
    for (size_t i = 0; i < capacity_; ++i) {
      if (slots_[i].seq.load(std::memory_order_relaxed) & 1) slots_[i].item()->~T();
    }
  }

  MpmcQueue(const MpmcQueue&) = delete;
  MpmcQueue& operator=(const MpmcQueue&) = delete;

  // Moves `v` in and returns true; returns false (leaving `v` untouched) if full.
  [[nodiscard]] bool try_push(T&& v) noexcept { return push_impl(std::move(v)); }

  // Copies `v` in and returns true; returns false if full. Only offered when
  // the copy cannot throw (so not for std::string or move-only types).
  [[nodiscard]] bool try_push(const T& v) noexcept
    requires std::is_nothrow_copy_constructible_v<T>
  {
    return push_impl(v);
  }

  // Moves the oldest claimable item into `out` and returns true; false if empty.
  [[nodiscard]] bool try_pop(T& out) noexcept {
    // C1: relaxed, pairs with none.
    size_t h = head_.value.load(std::memory_order_relaxed);
    for (;;) {
      Slot& slot = slots_[index(h)];
      // C2: acquire, pairs with P5.
      const size_t seq = slot.seq.load(std::memory_order_acquire);
      const auto diff = static_cast<std::ptrdiff_t>(seq - (2 * h + 1));
      if (diff == 0) {
        // C3: relaxed RMW, pairs with none; on failure it reloads h and we retry.
        if (head_.value.compare_exchange_weak(h, h + 1, std::memory_order_relaxed,
                                              std::memory_order_relaxed)) {
          T* item = slot.item();
          out = std::move(*item);
          item->~T();
          // C5: release, pairs with P2.
          slot.seq.store(2 * (h + capacity_), std::memory_order_release);
          return true;
        }
      } else if (diff < 0) {
        // C4: relaxed, pairs with none.
        const size_t now = head_.value.load(std::memory_order_relaxed);
        if (now == h) return false;
        h = now;
      } else {
        h = head_.value.load(std::memory_order_relaxed);  // C1 (retry)
      }
    }
  }

  size_t capacity() const noexcept { return capacity_; }

  // Approximate under concurrency; always within [0, capacity()].
  size_t size() const noexcept {
    const size_t h = head_.value.load(std::memory_order_relaxed);  // S1: relaxed, pairs with none
    const size_t t = tail_.value.load(std::memory_order_relaxed);  // S2: relaxed, pairs with none
    if (t <= h) return 0;
    return std::min(t - h, capacity_);
  }

 private:
  struct alignas(std::max(kCacheLineBytes, alignof(T))) Slot {
    Atom<size_t> seq;
    alignas(T) unsigned char storage[sizeof(T)];

    T* item() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
  };

  struct alignas(kCacheLineBytes) PaddedTicket {
    Atom<size_t> value{0};
  };

  static_assert(alignof(Slot) % kCacheLineBytes == 0 && sizeof(Slot) % kCacheLineBytes == 0,
                "each slot must fill whole cache lines");
  static_assert(alignof(PaddedTicket) == kCacheLineBytes &&
                    sizeof(PaddedTicket) == kCacheLineBytes,
                "head_ and tail_ must each own one cache line");

  static size_t CheckedCapacity(size_t capacity) {
    if (capacity == 0) throw std::invalid_argument("MpmcQueue: capacity must be > 0");
    return capacity;
  }

  size_t index(size_t ticket) const noexcept {
    return is_pow2_ ? (ticket & mask_) : (ticket % capacity_);
  }

  template <class U>
  bool push_impl(U&& v) noexcept {
    // P1: relaxed, pairs with none.
    size_t t = tail_.value.load(std::memory_order_relaxed);
    for (;;) {
      Slot& slot = slots_[index(t)];
      // P2: acquire, pairs with C5.
      const size_t seq = slot.seq.load(std::memory_order_acquire);
      const auto diff = static_cast<std::ptrdiff_t>(seq - 2 * t);
      if (diff == 0) {
        // P3: relaxed RMW, pairs with none; on failure it reloads t and we retry.
        if (tail_.value.compare_exchange_weak(t, t + 1, std::memory_order_relaxed,
                                              std::memory_order_relaxed)) {
          ::new (static_cast<void*>(slot.storage)) T(std::forward<U>(v));
          // P5: release, pairs with C2.
          slot.seq.store(2 * t + 1, std::memory_order_release);
          return true;
        }
      } else if (diff < 0) {
        // P4: relaxed, pairs with none.
        const size_t now = tail_.value.load(std::memory_order_relaxed);
        if (now == t) return false;
        t = now;
      } else {
        t = tail_.value.load(std::memory_order_relaxed);  // P1 (retry)
      }
    }
  }

  // Read-only after construction: shared by all threads without contention.
  const size_t capacity_;
  const size_t mask_;
  const bool is_pow2_;
  const std::unique_ptr<Slot[]> slots_;
  // Written by consumers / producers respectively; one cache line each.
  PaddedTicket head_;
  PaddedTicket tail_;
};

}  // namespace inferline
