#include "startup.hpp"

#include <gtest/gtest.h>

#include <map>

#include "endless/core/error.hpp"

namespace endless::core {
namespace {

struct fake_env {
  std::map<std::string, std::string> vars;
  getenv_fn fn() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

TEST(startup, nothing_inherited_from_a_shell) {
  fake_env env;
  auto s = parse_startup_env(env.fn(), 100);
  EXPECT_FALSE(s.from_parent);
  EXPECT_TRUE(s.fds.empty());
  EXPECT_EQ(s.ready_fd, -1);
  EXPECT_FALSE(s.error);
}

TEST(startup, fds_from_an_endless_parent) {
  fake_env env{{{"LISTEN_FDS", "3"},
                {"LISTEN_PID", "100"},
                {"LISTEN_FDNAMES", "tcp%3A127.0.0.1%3A8080:unix%3A/run/a%25b.sock:udp"},
                {"ENDLESS_PROTOCOL", "1"},
                {"ENDLESS_READY_FD", "6"},
                {"ENDLESS_GENERATION", "7"},
                {"ENDLESS_FD_OWNED", "010"}}};
  auto s = parse_startup_env(env.fn(), 100);
  ASSERT_EQ(s.fds.size(), 3u);
  EXPECT_TRUE(s.from_parent);
  EXPECT_EQ(s.fds[0].name, "tcp:127.0.0.1:8080");
  EXPECT_EQ(s.fds[0].fd, 3);
  EXPECT_FALSE(s.fds[0].owns_path);
  EXPECT_EQ(s.fds[1].name, "unix:/run/a%b.sock");
  EXPECT_TRUE(s.fds[1].owns_path);
  EXPECT_EQ(s.fds[2].name, "udp");
  EXPECT_EQ(s.fds[2].fd, 5);
  EXPECT_EQ(s.ready_fd, 6);
  EXPECT_EQ(s.generation, 7u);
}

TEST(startup, systemd_fds_never_own_their_path) {
  fake_env env{{{"LISTEN_FDS", "2"}, {"LISTEN_PID", "100"}, {"ENDLESS_FD_OWNED", "11"}}};
  auto s = parse_startup_env(env.fn(), 100);
  ASSERT_EQ(s.fds.size(), 2u);
  EXPECT_FALSE(s.from_parent);
  EXPECT_EQ(s.fds[0].name, "unknown");
  EXPECT_FALSE(s.fds[0].owns_path);
  EXPECT_FALSE(s.fds[1].owns_path);
}

TEST(startup, listen_pid_of_another_process_is_ignored) {
  fake_env env{{{"LISTEN_FDS", "1"}, {"LISTEN_PID", "99"}}};
  auto s = parse_startup_env(env.fn(), 100);
  EXPECT_TRUE(s.fds.empty());
  ASSERT_EQ(s.notes.size(), 1u);
  EXPECT_EQ(s.notes[0], "ignoring LISTEN_FDS=1: LISTEN_PID=99 is not this process (100)");
  fake_env unset{{{"LISTEN_FDS", "1"}}};
  EXPECT_TRUE(parse_startup_env(unset.fn(), 100).fds.empty());
}

TEST(startup, bad_count_is_ignored_with_a_note) {
  fake_env env{{{"LISTEN_FDS", "lots"}, {"LISTEN_PID", "100"}}};
  auto s = parse_startup_env(env.fn(), 100);
  EXPECT_TRUE(s.fds.empty());
  ASSERT_EQ(s.notes.size(), 1u);
}

TEST(startup, another_protocol_version_is_refused) {
  fake_env env{{{"LISTEN_FDS", "1"},
                {"LISTEN_PID", "100"},
                {"ENDLESS_PROTOCOL", "2"},
                {"ENDLESS_READY_FD", "4"}}};
  auto s = parse_startup_env(env.fn(), 100);
  EXPECT_EQ(s.error, errc::protocol_mismatch);
  EXPECT_EQ(s.ready_fd, -1);
  EXPECT_EQ(s.fds.size(), 1u) << "parsed, so that they can be closed";
}

TEST(startup, watchdog_applies_only_to_its_pid) {
  fake_env mine{{{"WATCHDOG_USEC", "500000"}, {"WATCHDOG_PID", "100"}}};
  EXPECT_EQ(parse_startup_env(mine.fn(), 100).watchdog_usec, 500000u);
  fake_env any{{{"WATCHDOG_USEC", "500000"}}};
  EXPECT_EQ(parse_startup_env(any.fn(), 100).watchdog_usec, 500000u);
  fake_env other{{{"WATCHDOG_USEC", "500000"}, {"WATCHDOG_PID", "99"}}};
  EXPECT_EQ(parse_startup_env(other.fn(), 100).watchdog_usec, 0u);
}

TEST(startup, fd_names_round_trip) {
  for (std::string name : {"tcp:[::1]:80", "unix:/a%3A:b", "%25", "plain", ""}) {
    EXPECT_EQ(decode_fd_name(encode_fd_name(name)), name);
    EXPECT_EQ(encode_fd_name(name).find(':'), std::string::npos);
  }
}

TEST(startup, executable_is_absolute_and_not_resolved_through_symlinks) {
  EXPECT_EQ(resolve_executable("/opt/app/current/server", "/home", nullptr),
            "/opt/app/current/server");
  EXPECT_EQ(resolve_executable("./server", "/srv/app", nullptr), "/srv/app/./server");
  EXPECT_EQ(resolve_executable("bin/server", "/srv/app", nullptr), "/srv/app/bin/server");
  EXPECT_EQ(resolve_executable("sh", "/", "/nonexistent:/bin"), "/bin/sh");
}

}  // namespace
}  // namespace endless::core
