#include "endless/core/error.hpp"

namespace endless::core {
namespace {

class category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "endless"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::bad_address:
        return "bad address";
      case errc::unknown_network:
        return "unknown network (want tcp, tcp4, tcp6 or unix)";
      case errc::inherited_mismatch:
        return "inherited socket is bound to another address";
      case errc::inherited_wrong_type:
        return "inherited fd is not a listening stream socket";
      case errc::protocol_mismatch:
        return "parent speaks another upgrade protocol version";
      case errc::already_upgrading:
        return "an upgrade is already running";
      case errc::draining:
        return "process is shutting down";
      case errc::not_ready:
        return "process is not ready yet";
      case errc::already_ready:
        return "ready() was already called";
      case errc::exec_failed:
        return "can't execute the new process";
      case errc::child_exited:
        return "new process exited before it was ready";
      case errc::ready_timeout:
        return "new process was not ready in time";
      case errc::aborted:
        return "upgrade aborted by shutdown";
    }
    return "unknown endless error";
  }
};

}  // namespace

const std::error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

void throw_error(std::error_code ec, const std::string& context) {
  throw std::system_error(ec, context);
}

}  // namespace endless::core
