#include "tls.hpp"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

#include "nocancel.hpp"

namespace endless::io {
namespace {

// ------------------------------------------------------------------ a socket BIO
// OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE when the peer is gone.
// A library must not change the process's signal dispositions, so ours sends with
// MSG_NOSIGNAL.

int bio_write(BIO* b, const char* data, int len) {
  int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b)));
  BIO_clear_retry_flags(b);
  ssize_t n;
  do {
    n = io::send(fd, data, static_cast<std::size_t>(len), MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
  return static_cast<int>(n);
}

int bio_read(BIO* b, char* data, int len) {
  int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b)));
  BIO_clear_retry_flags(b);
  ssize_t n;
  do {
    n = io::recv(fd, data, static_cast<std::size_t>(len), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
  return static_cast<int>(n);
}

long bio_ctrl(BIO*, int cmd, long, void*) {
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

int bio_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

BIO_METHOD* socket_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "endless socket");
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    return m;
  }();
  return method;
}

// The tls_set an SSL was created from, for the SNI callback.
int set_index() {
  static int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int on_server_name(SSL* ssl, int*, void*) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  const auto* set = static_cast<const tls_set*>(SSL_get_ex_data(ssl, set_index()));
  if (!name || !set) return SSL_TLSEXT_ERR_OK;
  SSL_CTX* ctx = set->for_name(name);
  if (ctx != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, ctx);
  return SSL_TLSEXT_ERR_OK;
}

constexpr unsigned char kAlpnH2[] = "\x02h2\x08http/1.1";
constexpr unsigned char kAlpnH1[] = "\x08http/1.1";

int on_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
            unsigned int inlen, void* offer_h2) {
  const unsigned char* ours = offer_h2 ? kAlpnH2 : kAlpnH1;
  unsigned int len = offer_h2 ? sizeof kAlpnH2 - 1 : sizeof kAlpnH1 - 1;
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, ours, len, in, inlen) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;  // nothing in common: go on without ALPN (HTTP/1.1)
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::vector<std::string> names_of(X509* cert) {
  std::vector<std::string> names;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans, i);
      if (gn->type != GEN_DNS) continue;
      const ASN1_STRING* s = gn->d.dNSName;
      names.push_back(lower({reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                             static_cast<std::size_t>(ASN1_STRING_length(s))}));
    }
    GENERAL_NAMES_free(sans);
  }
  if (names.empty()) {
    char cn[256];
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    if (n > 0) names.push_back(lower({cn, static_cast<std::size_t>(n)}));
  }
  return names;
}

std::string serial_of(X509* cert) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), nullptr);
  if (!bn) return {};
  char* hex = BN_bn2hex(bn);
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

}  // namespace

void tls_thread_exit() noexcept {
  OPENSSL_thread_stop();
}

std::string tls_last_error() {
  unsigned long e = ERR_get_error();
  std::string out;
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out = buf;
  }
  ERR_clear_error();
  return out.empty() ? "unknown TLS error" : out;
}

SSL_CTX* tls_set::for_name(std::string_view name) const noexcept {
  if (entries.empty()) return nullptr;
  char buf[256];
  if (name.size() >= sizeof buf) return entries[0].ctx.get();
  for (std::size_t i = 0; i < name.size(); ++i)
    buf[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(name[i])));
  std::string_view n(buf, name.size());
  std::size_t dot = n.find('.');
  for (const entry& e : entries) {
    for (const std::string& pattern : e.names) {
      if (pattern == n) return e.ctx.get();
      // "*.example.com" covers exactly one label (RFC 6125 §6.4.3).
      if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.' &&
          dot != std::string_view::npos && dot > 0 &&
          n.substr(dot) == std::string_view(pattern).substr(1)) {
        return e.ctx.get();
      }
    }
  }
  return entries[0].ctx.get();
}

std::shared_ptr<const tls_set> tls_store::build(std::string& why) const {
  auto set = std::make_shared<tls_set>();
  if (config_.certificates.empty()) {
    why = "no certificate configured";
    return nullptr;
  }
  for (const auto& [cert_file, key_file] : config_.certificates) {
    ctx_ptr ctx(SSL_CTX_new(TLS_server_method()));
    if (!ctx) {
      why = "SSL_CTX_new: " + tls_last_error();
      return nullptr;
    }
    SSL_CTX* c = ctx.get();
    SSL_CTX_set_min_proto_version(c, config_.min_version);
    // No renegotiation (a CPU sink for attackers, and nothing we need); a client that
    // closes without close_notify is an ordinary end of stream for HTTP, which frames
    // its own messages.
    SSL_CTX_set_options(
        c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    // send()-like writes; idle connections give their buffers back.
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    // Read several records per recv() instead of a 5-byte header and then its body (0.51 reads
    // per HTTP/2 request against nginx's 0.20). The callers read until EAGAIN, so nothing
    // stays buffered in OpenSSL without a read to come.
    SSL_CTX_set_read_ahead(c, 1);
    const std::string& ciphers = config_.ciphers;
    if (SSL_CTX_set_cipher_list(c, ciphers.empty() ? kDefaultCiphers : ciphers.c_str()) != 1) {
      why = "bad cipher list '" + ciphers + "': " + tls_last_error();
      return nullptr;
    }
    if (!config_.ciphersuites.empty() &&
        SSL_CTX_set_ciphersuites(c, config_.ciphersuites.c_str()) != 1) {
      why = "bad TLS 1.3 cipher suites '" + config_.ciphersuites + "': " + tls_last_error();
      return nullptr;
    }
    if (SSL_CTX_use_certificate_chain_file(c, cert_file.c_str()) != 1) {
      why = "can't load certificate chain " + cert_file + ": " + tls_last_error();
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey_file(c, key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      unsigned long e = ERR_peek_last_error();
      if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
        why = "private key " + key_file + " does not match certificate " + cert_file;
        ERR_clear_error();
      } else {
        why = "can't load private key " + key_file + ": " + tls_last_error();
      }
      return nullptr;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
      why = "private key " + key_file + " does not match certificate " + cert_file;
      ERR_clear_error();
      return nullptr;
    }
    if (config_.client_auth != client_auth_mode::none) {
      if (config_.client_ca_file.empty()) {
        why = "client certificate verification needs a CA file";
        return nullptr;
      }
      if (SSL_CTX_load_verify_locations(c, config_.client_ca_file.c_str(), nullptr) != 1) {
        why = "can't load client CA " + config_.client_ca_file + ": " + tls_last_error();
        return nullptr;
      }
      if (STACK_OF(X509_NAME)* cas = SSL_load_client_CA_file(config_.client_ca_file.c_str())) {
        SSL_CTX_set_client_CA_list(c, cas);
      }
      int mode = SSL_VERIFY_PEER;
      if (config_.client_auth == client_auth_mode::required) {
        mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
      }
      SSL_CTX_set_verify(c, mode, nullptr);
    }
    static const unsigned char kSessionContext[] = "endless";
    SSL_CTX_set_session_id_context(c, kSessionContext, sizeof kSessionContext - 1);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"  // OpenSSL's macro
    SSL_CTX_set_tlsext_servername_callback(c, on_server_name);
#pragma GCC diagnostic pop
    SSL_CTX_set_alpn_select_cb(c, on_alpn,
                               config_.offer_h2 ? const_cast<unsigned char*>(kAlpnH2) : nullptr);
    X509* leaf = SSL_CTX_get0_certificate(c);
    set->entries.push_back({std::move(ctx), names_of(leaf), serial_of(leaf)});
  }
  return set;
}

bool tls_store::load(const tls_config& config, std::string& why) {
  config_ = config;
  auto set = build(why);
  if (!set) return false;
  std::lock_guard lock(mu_);
  set_ = std::move(set);
  return true;
}

bool tls_store::reload(std::string& what) {
  std::string why;
  auto set = build(why);
  if (!set) {
    what = "certificate reload failed, keeping the certificates in use: " + why;
    return false;
  }
  what = "certificates reloaded (serial";
  for (const auto& e : set->entries)
    what += " " + e.serial;
  what += ")";
  std::lock_guard lock(mu_);
  set_ = std::move(set);
  return true;
}

std::shared_ptr<const tls_set> tls_store::current() const {
  std::lock_guard lock(mu_);
  return set_;
}

SSL* tls_store::new_ssl(int fd, std::shared_ptr<const tls_set>& set, std::string& why) const {
  set = current();
  if (!set) {
    why = "no certificates loaded";
    return nullptr;
  }
  SSL* ssl = SSL_new(set->entries[0].ctx.get());
  BIO* bio = ssl ? BIO_new(socket_method()) : nullptr;
  if (!bio) {
    why = tls_last_error();
    SSL_free(ssl);
    return nullptr;
  }
  BIO_set_data(bio, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd)));
  SSL_set_bio(ssl, bio, bio);
  SSL_set_ex_data(ssl, set_index(), const_cast<tls_set*>(set.get()));
  SSL_set_accept_state(ssl);
  return ssl;
}

namespace {

// ERR_clear_error() costs ~1% of an HTTP/2 request; looking first is cheaper.
void clear_errors() {
  if (ERR_peek_error() != 0) ERR_clear_error();
}

ssize_t after_failure(SSL* ssl, int r, bool& wants_write) {
  int saved = errno;
  switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_WANT_WRITE:
      wants_write = true;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      return 0;
    case SSL_ERROR_SYSCALL:
      ERR_clear_error();
      if (saved == 0) return 0;
      errno = saved;
      return -1;
    default:
      ERR_clear_error();
      errno = ECONNRESET;
      return -1;
  }
}

}  // namespace

ssize_t tls_read(SSL* ssl, char* buf, std::size_t len, bool& wants_write) {
  wants_write = false;
  std::size_t n = 0;
  // SSL_get_error() looks at this thread's error queue first: an error a handler left there
  // (any OpenSSL call it made) would turn our WANT_READ into a fatal error.
  clear_errors();
  errno = 0;
  int r = SSL_read_ex(ssl, buf, len, &n);
  if (r == 1) return static_cast<ssize_t>(n);
  return after_failure(ssl, r, wants_write);
}

ssize_t tls_write(SSL* ssl, const char* buf, std::size_t len, bool& wants_write) {
  wants_write = false;
  std::size_t n = 0;
  clear_errors();
  errno = 0;
  int r = SSL_write_ex(ssl, buf, len, &n);
  if (r == 1) return static_cast<ssize_t>(n);
  ssize_t v = after_failure(ssl, r, wants_write);
  if (v == 0) {
    errno = EPIPE;  // a write that meets the end of the stream failed
    return -1;
  }
  return v;
}

int tls_handshake(SSL* ssl, bool& wants_write, std::string& why) {
  wants_write = false;
  ERR_clear_error();
  errno = 0;
  int r = SSL_do_handshake(ssl);
  if (r == 1) return 1;
  int e = SSL_get_error(ssl, r);
  if (e == SSL_ERROR_WANT_READ) return 0;
  if (e == SSL_ERROR_WANT_WRITE) {
    wants_write = true;
    return 0;
  }
  why = e == SSL_ERROR_SYSCALL ? "connection closed during the handshake" : tls_last_error();
  ERR_clear_error();
  return -1;
}

void tls_close_notify(SSL* ssl) {
  ERR_clear_error();
  (void)SSL_shutdown(ssl);
  ERR_clear_error();
}

std::string_view tls_alpn(const SSL* ssl) {
  const unsigned char* p = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl, &p, &len);
  return p ? std::string_view(reinterpret_cast<const char*>(p), len) : std::string_view();
}

std::string tls_peer_subject(const SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (!cert) return {};
  char* line = X509_NAME_oneline(X509_get_subject_name(cert), nullptr, 0);
  std::string out = line ? line : "";
  OPENSSL_free(line);
  return out;
}

std::string_view tls_server_name(const SSL* ssl) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  return name ? std::string_view(name) : std::string_view();
}

}  // namespace endless::io
