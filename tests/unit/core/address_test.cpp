#include "endless/core/address.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "endless/core/error.hpp"

namespace endless::core {
namespace {

endpoint must_resolve(std::string_view net, std::string_view addr) {
  endpoint ep;
  std::string why;
  EXPECT_FALSE(resolve(net, addr, ep, &why)) << why;
  return ep;
}

std::string why_not(std::string_view net, std::string_view addr) {
  endpoint ep;
  std::string why;
  EXPECT_TRUE(resolve(net, addr, ep, &why)) << net << " " << addr << " resolved";
  return why;
}

TEST(address, forms_of_tcp) {
  EXPECT_EQ(to_string(must_resolve("tcp", "127.0.0.1:8080").sa(), sizeof(sockaddr_in)),
            "127.0.0.1:8080");
  auto v6 = must_resolve("tcp", "[::1]:8080");
  EXPECT_EQ(to_string(v6.sa(), v6.len), "[::1]:8080");
  auto any = must_resolve("tcp", ":8080");
  EXPECT_EQ(to_string(any.sa(), any.len), "[::]:8080") << "dual-stack wildcard";
  auto any4 = must_resolve("tcp4", ":8080");
  EXPECT_EQ(to_string(any4.sa(), any4.len), "0.0.0.0:8080");
  auto any6 = must_resolve("tcp6", ":8080");
  EXPECT_EQ(to_string(any6.sa(), any6.len), "[::]:8080");
  auto local = must_resolve("tcp", "localhost:8080");
  EXPECT_EQ(to_string(local.sa(), local.len), "127.0.0.1:8080") << "IPv4 first, as Go";
  EXPECT_EQ(local.name, "tcp:localhost:8080");
  EXPECT_TRUE(must_resolve("tcp", "127.0.0.1:0").any_port);
  EXPECT_FALSE(must_resolve("tcp", "127.0.0.1:1").any_port);
}

TEST(address, unix_paths_and_abstract_names) {
  auto p = must_resolve("unix", "/run/app.sock");
  EXPECT_EQ(p.name, "unix:/run/app.sock");
  EXPECT_EQ(to_string(p.sa(), p.len), "/run/app.sock");
  auto a = must_resolve("unix", "@app");
  EXPECT_EQ(to_string(a.sa(), a.len), "@app");
}

TEST(address, errors_say_what_is_wrong) {
  EXPECT_EQ(why_not("tcp", "127.0.0.1"), "missing port in address '127.0.0.1'");
  EXPECT_EQ(why_not("tcp", "127.0.0.1:http"),
            "bad port 'http' in address '127.0.0.1:http' (want 0-65535)");
  EXPECT_EQ(why_not("tcp", "127.0.0.1:65536"),
            "bad port '65536' in address '127.0.0.1:65536' (want 0-65535)");
  EXPECT_EQ(why_not("tcp", "::1:80"), "IPv6 address '::1:80' needs brackets: [host]:port");
  EXPECT_EQ(why_not("tcp", "[::1:80"), "missing ']' in address '[::1:80'");
  EXPECT_NE(why_not("tcp4", "[::1]:80").find("can't resolve host '::1'"), std::string::npos);
  EXPECT_NE(why_not("tcp", "no-such-host.invalid:80").find("can't resolve host"),
            std::string::npos);
  EXPECT_EQ(why_not("udp", ":80"), "unknown network 'udp' (want tcp, tcp4, tcp6 or unix)");
  EXPECT_EQ(why_not("unix", ""), "unix socket path is empty");
  EXPECT_NE(why_not("unix", std::string(200, 'x')).find("longer than"), std::string::npos);
  endpoint ep;
  EXPECT_EQ(resolve("udp", ":80", ep), errc::unknown_network);
  EXPECT_EQ(resolve("tcp", "x", ep), errc::bad_address);
}

TEST(address, same_address_compares_family_address_and_port) {
  auto want = must_resolve("tcp", "127.0.0.1:8080");
  auto same = must_resolve("tcp", "127.0.0.1:8080");
  auto other_port = must_resolve("tcp", "127.0.0.1:8081");
  auto other_host = must_resolve("tcp", "127.0.0.2:8080");
  auto v6 = must_resolve("tcp", "[::1]:8080");
  EXPECT_TRUE(same_address(want, same.sa(), same.len));
  EXPECT_FALSE(same_address(want, other_port.sa(), other_port.len));
  EXPECT_FALSE(same_address(want, other_host.sa(), other_host.len));
  EXPECT_FALSE(same_address(want, v6.sa(), v6.len));
  auto any_port = must_resolve("tcp", "127.0.0.1:0");
  EXPECT_TRUE(same_address(any_port, other_port.sa(), other_port.len));
  auto path = must_resolve("unix", "/a");
  auto path2 = must_resolve("unix", "/b");
  EXPECT_TRUE(same_address(path, path.sa(), path.len));
  EXPECT_FALSE(same_address(path, path2.sa(), path2.len));
}

}  // namespace
}  // namespace endless::core
