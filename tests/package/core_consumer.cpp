// The lifecycle core alone, from an installed endless (pkg-config endless-core): a listener
// from the registry, ready(), a final shutdown; no HTTP, no OpenSSL.
#include <endless/core/upgrader.hpp>

#include <cstdio>

int main() {
  endless::core::upgrader up;
  auto fd = up.listen("tcp", "127.0.0.1:0");
  up.ready();
  up.shutdown();
  up.wait();
  std::puts(fd ? "core ok" : "no listener");
  return fd ? 0 : 1;
}
