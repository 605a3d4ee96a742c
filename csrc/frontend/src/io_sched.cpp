// The frontend's threads under overload (io_sched.h).
#include "io_sched.h"

#include <cstdio>
#include <cstring>

#if defined(__linux__)
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
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

int SetConnectionsNoDelay(int port, bool nodelay) noexcept {
#if defined(__linux__)
  if (port <= 0) return 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  const int own = dirfd(dir);
  int set = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = atoi(e->d_name);
    if (fd == own) continue;
    char link[32];
    const ssize_t n = readlinkat(own, e->d_name, link, sizeof link - 1);
    if (n < 7 || std::strncmp(link, "socket:", 7) != 0) continue;
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) continue;  // closed meanwhile
    int local = -1;
    if (addr.ss_family == AF_INET) local = ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
    if (addr.ss_family == AF_INET6) local = ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
    if (local != port) continue;
    int type = 0;
    socklen_t type_len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM) continue;
    len = sizeof addr;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) continue;  // the listener
    const int value = nodelay ? 1 : 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, sizeof value) == 0) ++set;
  }
  closedir(dir);
  return set;
#else
  (void)port;
  (void)nodelay;
  return 0;
#endif
}

void OverloadSchedule::Apply(bool overloaded) noexcept {
  if (batch_) SetFrontendThreadsBatch(overloaded);
  if (port_ > 0) SetConnectionsNoDelay(port_, !overloaded);
}

void OverloadSchedule::Tick(double now_s, bool refusing) noexcept {
  if (!batch_ && port_ <= 0) return;
  if (refusing) {
    last_refusing_s_ = now_s;
    if (!batched_ || now_s - applied_s_ >= kReapplyS) {
      Apply(true);
      batched_ = true;
      applied_s_ = now_s;
    }
  } else if (batched_ && now_s - last_refusing_s_ >= kCalmS) {
    Restore();
  }
}

void OverloadSchedule::Restore() noexcept {
  if (!batched_) return;
  Apply(false);
  batched_ = false;
}

}  // namespace inferline::grpcfe
