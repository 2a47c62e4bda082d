// libFuzzer target for the parser of the variables a process inherits (parse_startup_env:
// LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, ENDLESS_*, NOTIFY_SOCKET, WATCHDOG_*), which reads
// them through a getenv function, and for the fd-name encoding. Checks: fds only when
// LISTEN_FDS is a count and LISTEN_PID is us, numbered from 3, one name per fd; a refused
// inheritance keeps no readiness channel; path ownership only from an endless parent; the
// generation table and elders only from an endless parent, elders older than us, oldest
// first, on distinct fds above the standard streams;
// decode(encode(name)) == name; and the contract with spawn.cpp: names encoded and joined
// with ':' come back exactly, with their ownership flags.
//
// Input: two bytes of flags, then the values separated by NUL (environment values hold no
// NUL). Flags: bit i of the first byte and bits 0-5 of the second: variable i of
// protocol::kAllVariables is set (to the next value; ENDLESS_TAKEOVER and _MODE, read by the
// load-time snapshot, must not change what the parser returns); bit 6 of the second: LISTEN_PID is
// this process's pid whatever the value says. Each value is also a name in the takeover
// answer: decode_word(encode_word(v)) == v, as one word of one line.
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "protocol.hpp"
#include "startup.hpp"

using namespace endless::core;

namespace {

[[noreturn]] void failed(const char* what, int line) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
  std::abort();
}
// A failed invariant names itself before the abort that libFuzzer reports.
#define CHECK(cond) ((cond) ? void() : failed(#cond, __LINE__))

constexpr pid_t kSelf = 4242;
constexpr std::size_t kVariables = std::size(protocol::kAllVariables);
static_assert(kVariables == 14);

struct fake_env {
  std::vector<std::pair<std::string, std::string>> vars;
  const char* get(const char* name) const {
    for (const auto& [k, v] : vars) {
      if (k == name) return v.c_str();
    }
    return nullptr;
  }
  bool has(const char* name) const { return get(name) != nullptr; }
};

startup_env parse(const fake_env& e) {
  return parse_startup_env([&e](const char* name) { return e.get(name); }, kSelf);
}

void check_invariants(const fake_env& e, const startup_env& env) {
  namespace p = protocol;
  CHECK(env.from_parent == e.has(p::kProtocol));
  if (env.error) CHECK(env.from_parent && env.ready_fd == -1);
  CHECK(env.ready_fd >= -1);
  if (env.watchdog_usec > 0) CHECK(e.has(p::kWatchdogUsec));
  if (env.table_fd >= 0) CHECK(env.from_parent && e.has(p::kTable) && env.table_fd >= 3);
  if (!env.elders.empty()) CHECK(env.from_parent && e.has(p::kElders));
  for (std::size_t i = 0; i < env.elders.size(); ++i) {
    const inherited_elder& el = env.elders[i];
    CHECK(el.generation < env.generation && el.pid > 0 && el.pidfd >= 3);
    CHECK(el.pidfd != env.ready_fd && el.pidfd != env.table_fd);
    if (i > 0) CHECK(env.elders[i - 1].generation < el.generation);
    for (std::size_t j = 0; j < i; ++j)
      CHECK(env.elders[j].pidfd != el.pidfd);
  }
  if (!e.has(p::kNotifySocket)) CHECK(env.notify_socket.empty());
  if (!env.fds.empty()) {
    CHECK(e.has(p::kListenFds) && e.has(p::kListenPid));
    CHECK(env.fds.size() <= 65536);
  }
  std::vector<std::string> names;
  if (const char* n = e.get(p::kListenFdNames)) {
    std::string_view s(n);
    for (;;) {
      std::size_t at = s.find(':');
      names.emplace_back(s.substr(0, at));
      if (at == std::string_view::npos) break;
      s.remove_prefix(at + 1);
    }
  }
  std::string_view owned = e.has(p::kFdOwned) ? e.get(p::kFdOwned) : "";
  for (std::size_t i = 0; i < env.fds.size(); ++i) {
    const inherited_fd& fd = env.fds[i];
    CHECK(fd.fd == p::kFirstFd + static_cast<int>(i));
    CHECK(fd.name == (i < names.size() ? decode_fd_name(names[i]) : "unknown"));
    CHECK(fd.owns_path == (env.from_parent && i < owned.size() && owned[i] == '1'));
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  namespace p = protocol;
  for (int count : {1025, 65536, 65537}) {
    fake_env e;
    e.vars = {{p::kListenFds, std::to_string(count)}, {p::kListenPid, std::to_string(kSelf)}};
    startup_env env = parse(e);
    check_invariants(e, env);
    CHECK(env.fds.size() == (count <= 65536 ? static_cast<std::size_t>(count) : 0));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace p = protocol;
  if (size < 2) return 0;
  unsigned flags = data[0] | (data[1] << 8);
  std::string_view rest(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::vector<std::string_view> values;
  while (values.size() < kVariables) {
    std::size_t nul = rest.find('\0');
    values.push_back(rest.substr(0, nul));
    if (nul == std::string_view::npos) {
      rest = {};
      break;
    }
    rest.remove_prefix(nul + 1);
  }

  fake_env e;
  for (std::size_t i = 0, next = 0; i < kVariables; ++i) {
    if (!(flags & (1u << i))) continue;
    std::string_view v = next < values.size() ? values[next++] : std::string_view();
    e.vars.emplace_back(p::kAllVariables[i], std::string(v));
  }
  if (flags & (1u << 14)) {
    std::erase_if(e.vars, [](const auto& kv) { return kv.first == p::kListenPid; });
    e.vars.emplace_back(p::kListenPid, std::to_string(kSelf));
  }
  // Up to 65536 fds are taken, ~30 ms under ASan: the fuzzer would spend its time there.
  // Counts past 1024 are checked once, at start-up (LLVMFuzzerInitialize).
  if (const char* n = e.get(p::kListenFds)) {
    int count = 0;
    std::string_view s(n);
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), count);
    if (ec == std::errc{} && end == s.data() + s.size() && count > 1024 && count <= 65536) return 0;
  }
  startup_env env = parse(e);
  check_invariants(e, env);
  // Pure: the same variables, the same answer.
  startup_env again = parse(e);
  CHECK(again.fds.size() == env.fds.size() && again.notes == env.notes &&
        again.ready_fd == env.ready_fd && again.generation == env.generation &&
        again.error == env.error && again.table_fd == env.table_fd &&
        again.elders.size() == env.elders.size());

  // Every value is also a name to carry across an upgrade.
  std::vector<std::string> names;
  std::string joined;
  for (std::string_view v : values) {
    CHECK(decode_fd_name(encode_fd_name(v)) == v);
    const std::string word = encode_word(v);
    CHECK(decode_word(word) == v);
    CHECK(word.find_first_of(" \n\r") == std::string::npos);
    names.emplace_back(v);
    joined += (names.size() == 1 ? "" : ":") + encode_fd_name(v);
  }
  std::string owned;
  for (std::size_t i = 0; i < names.size(); ++i)
    owned += (flags >> (i % 16)) & 1 ? '1' : '0';
  fake_env handed;
  handed.vars = {{p::kListenFds, std::to_string(names.size())},
                 {p::kListenPid, std::to_string(kSelf)},
                 {p::kListenFdNames, joined},
                 {p::kProtocol, std::to_string(p::kVersion)},
                 {p::kReadyFd, std::to_string(3 + names.size())},
                 {p::kFdOwned, owned},
                 {p::kGeneration, std::to_string(names.size() + 1)}};
  // The lineage as spawn.cpp writes it: the table, then one elder per name (pids and
  // generations from the flags), on the fds after the readiness channel.
  if (!names.empty()) {
    const std::size_t table = 4 + names.size();
    std::string elders;
    for (std::size_t i = 0; i < names.size(); ++i) {
      elders += (i ? "," : "") + std::to_string(i) + "/" +
                std::to_string(100 + (flags & 0xff) + i) + "/" + std::to_string(table + 1 + i);
    }
    handed.vars.emplace_back(p::kTable, std::to_string(table));
    handed.vars.emplace_back(p::kElders, elders);
  }
  startup_env child = parse(handed);
  check_invariants(handed, child);
  CHECK(!child.error && child.from_parent && child.fds.size() == names.size());
  CHECK(child.ready_fd == static_cast<int>(3 + names.size()));
  CHECK(child.generation == names.size() + 1);
  CHECK(child.elders.size() == names.size());
  if (!names.empty()) CHECK(child.table_fd == static_cast<int>(4 + names.size()));
  for (std::size_t i = 0; i < child.elders.size(); ++i) {
    CHECK(child.elders[i].generation == i);
    CHECK(child.elders[i].pidfd == static_cast<int>(5 + names.size() + i));
  }
  for (std::size_t i = 0; i < names.size(); ++i) {
    CHECK(child.fds[i].name == names[i]);
    CHECK(child.fds[i].owns_path == (owned[i] == '1'));
  }
  return 0;
}
