// The process the core's integration tests start and upgrade: tiny_http servers on the
// listeners named by flags, plus switches that make it misbehave on purpose.
//   --addr HOST:PORT (repeatable)  --unix PATH (repeatable)  --pidfile F
//   --hammer-time S  --upgrade-timeout MS  --fault-file F  --hooks  --chdir DIR
//   --udp NAME   pass a UDP socket along under NAME (created if not inherited)
//   --open-file F   open F without O_CLOEXEC and keep it open (the first process only)
// The fault file is read at start: "exit1", "noready", "segv" make this process fail in
// that way before it is ready (the test writes the file just before sending SIGHUP).
// Routes: / /pid /inode /fds /version /generation /sleep?ms=N /udp /env /upgrade
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "endless/endless.hpp"
#include "tiny_http.hpp"

#ifndef HELPER_VERSION
#define HELPER_VERSION "1"
#endif

namespace {

int count_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d))
      ++n;
    ::closedir(d);
  }
  return n - 3;  // ".", "..", and the fd of the open directory itself
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

ino_t inode_of(int fd) {
  struct stat st {};
  ::fstat(fd, &st);
  return st.st_ino;
}

// The upgrade protocol's variables visible to anything this process would start.
std::string protocol_variables_seen() {
  std::string seen;
  for (const char* v : {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "ENDLESS_PROTOCOL",
                        "ENDLESS_READY_FD", "ENDLESS_GENERATION", "ENDLESS_FD_OWNED",
                        "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}) {
    if (::getenv(v)) seen += std::string(v) + " ";
  }
  return seen.empty() ? "none" : seen;
}

std::string tag() {
  return std::to_string(::getpid()) + " ";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::pair<std::string, std::string>> listeners;  // network, address
  endless::core::options opts;
  std::string fault_file, chdir_to, udp_name;
  bool hooks = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "core_helper: %s needs a value\n", flag.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (flag == "--addr") {
      listeners.emplace_back("tcp", value());
    } else if (flag == "--unix") {
      listeners.emplace_back("unix", value());
    } else if (flag == "--pidfile") {
      opts.pid_file = value();
    } else if (flag == "--hammer-time") {
      opts.hammer_time =
          std::chrono::milliseconds(static_cast<long long>(std::stod(value()) * 1000));
    } else if (flag == "--upgrade-timeout") {
      opts.upgrade_timeout = std::chrono::milliseconds(std::stoll(value()));
    } else if (flag == "--fault-file") {
      fault_file = value();
    } else if (flag == "--chdir") {
      chdir_to = value();
    } else if (flag == "--udp") {
      udp_name = value();
    } else if (flag == "--hooks") {
      hooks = true;
    } else if (flag == "--open-file") {
      // Opened without O_CLOEXEC and kept, as a careless library would, by the first process
      // only: it must not reach the new process of an upgrade.
      std::string path = value();
      if (endless::core::this_process_generation() == 0 && ::open(path.c_str(), O_RDONLY) < 0) {
        return 2;
      }
    } else {
      std::fprintf(stderr, "core_helper: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::string fault = fault_file.empty() ? "" : read_all(fault_file);
  if (fault == "exit1") return 1;
  if (fault == "segv") {
    ::signal(SIGSEGV, SIG_DFL);  // die by the signal even under a sanitizer's handler
    ::raise(SIGSEGV);
  }

  try {
    endless::core::upgrader up(opts);
    auto& reg = endless::core::registry::instance();
    endless::core::unique_fd udp;
    if (!udp_name.empty()) {
      udp = reg.take(udp_name);
      if (!udp) {
        udp.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        reg.add(udp_name, udp.get());
      }
    }
    const ino_t udp_inode = udp ? inode_of(udp.get()) : 0;

    std::vector<std::unique_ptr<tiny::server>> servers;
    for (const auto& [net, addr] : listeners) {
      auto fd = up.listen(net, addr);
      const ino_t inode = inode_of(fd.get());
      up.log(std::to_string(::getpid()) + " " + net + ":" + endless::core::local_address(fd.get()));
      auto self = std::make_shared<tiny::server*>(nullptr);  // set once the server exists
      auto srv = std::make_unique<tiny::server>(
          std::move(fd), [&, inode, self](const std::string& t) -> tiny::response {
            if (t == "/") return {200, "Hello Zero-Downtime!\n"};
            if (t == "/pid") return {200, std::to_string(::getpid())};
            if (t == "/inode") return {200, std::to_string(inode)};
            if (t == "/udp") return {200, std::to_string(udp_inode)};
            if (t == "/fds") return {200, std::to_string(count_fds())};
            if (t == "/version") return {200, HELPER_VERSION};
            if (t == "/env") return {200, protocol_variables_seen()};
            if (t == "/upgrade") {
              // The API form of SIGHUP: waits for the real outcome.
              std::error_code ec = up.upgrade().get();
              return {200, ec ? ec.message() : "ok"};
            }
            if (t == "/generation") return {200, std::to_string(up.generation())};
            if (t.rfind("/sleep?ms=", 0) == 0) {
              bool full = (*self)->sleep_for(std::chrono::milliseconds(std::stoll(t.substr(10))));
              return {200, full ? "slept" : "hammered"};
            }
            return {404, "not found"};
          });
      *self = srv.get();
      if (hooks) {
        // One set of hooks per server: they must run once each, in registration order.
        std::string id = std::to_string(servers.size());
        for (int sig : {SIGHUP, SIGUSR1, SIGTERM, SIGTSTP}) {
          up.on(endless::core::pre_signal, sig,
                [&up, id, sig] { up.log(tag() + "hook pre " + std::to_string(sig) + " " + id); });
          up.on(endless::core::post_signal, sig,
                [&up, id, sig] { up.log(tag() + "hook post " + std::to_string(sig) + " " + id); });
        }
        up.on_shutdown([&up, id] { up.log(tag() + "hook shutdown " + id); });
      }
      up.attach(*srv);
      servers.push_back(std::move(srv));
    }
    if (!chdir_to.empty() && ::chdir(chdir_to.c_str()) != 0) return 3;
    if (fault == "noready") {
      for (;;)
        ::pause();  // never says it is ready
    }
    up.ready();
    // Accept only once ready: a new process that gets rolled back must not take
    // connections with it. Until then they wait in the shared queue.
    for (auto& s : servers)
      s->start();
    up.wait();
    for (auto& s : servers)
      up.detach(*s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "core_helper: %s\n", e.what());
    return 1;
  }
  return 0;
}
