// TLS for the event loops (internal): the certificate store, and non-blocking reads and
// writes on an SSL that behave like recv() and send().
//
// A tls_store holds the server's certificates as one immutable tls_set (an SSL_CTX per
// certificate, the first one the default, the others picked by SNI). reload() builds a
// complete new set from the files and swaps it in only if every certificate and key loaded
// and matched; otherwise the old set stays and the reason is returned. Each connection
// keeps a shared_ptr to the set it started its handshake with, so a reload never frees a
// context under a handshake in progress; existing connections go on with what they have.
//
// Thread safety: tls_store's members may be called from any thread; an SSL belongs to the
// thread that owns its connection.
#pragma once

#include <openssl/ssl.h>
#include <sys/types.h>

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace endless::io {

enum class client_auth_mode { none, optional, required };

struct tls_config {
  struct pair {
    std::string cert_file;  // PEM: the leaf, then its intermediates
    std::string key_file;
  };
  std::vector<pair> certificates;  // the first is the default (no or unknown SNI)
  std::string client_ca_file;
  client_auth_mode client_auth = client_auth_mode::none;
  int min_version = TLS1_2_VERSION;
  std::string ciphers;       // TLS 1.2; empty: kDefaultCiphers
  std::string ciphersuites;  // TLS 1.3; empty: OpenSSL's default (all AEAD)
  bool offer_h2 = true;      // ALPN: h2 before http/1.1
};

// Mozilla's "intermediate" TLS 1.2 list: forward secrecy and AEAD only.
inline constexpr const char* kDefaultCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

struct ctx_deleter {
  void operator()(SSL_CTX* c) const noexcept { SSL_CTX_free(c); }
};
using ctx_ptr = std::unique_ptr<SSL_CTX, ctx_deleter>;

// One loaded generation of certificates.
struct tls_set {
  struct entry {
    ctx_ptr ctx;
    std::vector<std::string> names;  // DNS names (lower case; "*.example.com" wildcards)
    std::string serial;              // hex, for logs
  };
  std::vector<entry> entries;  // [0] is the default
  // The context for an SNI name, or the default.
  SSL_CTX* for_name(std::string_view name) const noexcept;
};

class tls_store {
 public:
  // Loads every certificate; false with `why` set if one fails.
  bool load(const tls_config& config, std::string& why);
  // Loads the files again; swaps only when all of them load. `what` describes the result.
  bool reload(std::string& what);
  std::shared_ptr<const tls_set> current() const;
  // A new server-side SSL for an accepted socket, or nullptr (with `why`).
  SSL* new_ssl(int fd, std::shared_ptr<const tls_set>& set, std::string& why) const;
  const tls_config& config() const noexcept { return config_; }

 private:
  std::shared_ptr<const tls_set> build(std::string& why) const;
  tls_config config_;
  mutable std::mutex mu_;
  std::shared_ptr<const tls_set> set_;
};

// recv()/send() semantics on an SSL: > 0 bytes; 0 end of stream; -1 with errno EAGAIN
// (try again when the socket is readable or writable) or another error. `wants_write` is
// set when the operation waits for the socket to become writable rather than readable.
ssize_t tls_read(SSL* ssl, char* buf, std::size_t len, bool& wants_write);
ssize_t tls_write(SSL* ssl, const char* buf, std::size_t len, bool& wants_write);
// 1 done, 0 in progress (wants_write as above), -1 failed (`why` set).
int tls_handshake(SSL* ssl, bool& wants_write, std::string& why);
// Sends close_notify without waiting for the peer's (never blocks).
void tls_close_notify(SSL* ssl);
// After the handshake: "h2", "http/1.1" or "".
std::string_view tls_alpn(const SSL* ssl);
std::string tls_peer_subject(const SSL* ssl);  // "" without a client certificate
std::string_view tls_server_name(const SSL* ssl);
// Frees this thread's OpenSSL state (its random generators, its error queue). A thread that
// did TLS calls it before it reports its end: the process may exit right after, before the
// thread-local destructors would have run.
void tls_thread_exit() noexcept;
// The first OpenSSL error on this thread's queue, as text (and clears the queue).
std::string tls_last_error();

}  // namespace endless::io
