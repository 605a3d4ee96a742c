// The frontend's threads under overload (io_sched.h).
#include "io_sched.h"

#include <cstdio>
#include <cstring>

#if defined(__linux__)
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>
#endif

namespace inferline::grpcfe {

void NameThisThread(const char* name) noexcept {
#if defined(__linux__)
  char buf[16];
  std::strncpy(buf, name, sizeof buf - 1);
  buf[sizeof buf - 1] = '\0';
  pthread_setname_np(pthread_self(), buf);
#else
  (void)name;
#endif
}

bool IsFrontendThreadName(const char* comm) noexcept {
  // gRPC 1.5x's names, cut to 15 bytes as the kernel keeps them, and the frontend's "il-" threads.
  static const char* const kPrefixes[] = {"nexting_thread", "default-execut", "grpc_global_tim", "resolver-execu",
                                          "grpcpp_sync_ser", "event_engine", "il-"};
  for (const char* p : kPrefixes) {
    if (std::strncmp(comm, p, std::strlen(p)) == 0) return true;
  }
  return false;
}

int SetFrontendThreadsBatch(bool batch) noexcept {
#if defined(__linux__)
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  int set = 0;
  const sched_param param{};
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[300];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // exited
    char comm[32];
    const ssize_t n = read(fd, comm, sizeof comm - 1);
    close(fd);
    if (n <= 0) continue;
    comm[n] = '\0';
    if (char* nl = std::strchr(comm, '\n')) *nl = '\0';
    if (!IsFrontendThreadName(comm)) continue;
    const pid_t tid = static_cast<pid_t>(atoi(e->d_name));
    if (sched_setscheduler(tid, batch ? SCHED_BATCH : SCHED_OTHER, &param) == 0) ++set;
  }
  closedir(dir);
  return set;
#else
  (void)batch;
  return 0;
#endif
}

void OverloadSchedule::Tick(double now_s, bool refusing) noexcept {
  if (!enabled_) return;
  if (refusing) {
    last_refusing_s_ = now_s;
    if (!batched_ || now_s - applied_s_ >= kReapplyS) {
      SetFrontendThreadsBatch(true);
      batched_ = true;
      applied_s_ = now_s;
    }
  } else if (batched_ && now_s - last_refusing_s_ >= kCalmS) {
    Restore();
  }
}

void OverloadSchedule::Restore() noexcept {
  if (!batched_) return;
  SetFrontendThreadsBatch(false);
  batched_ = false;
}

}  // namespace inferline::grpcfe
