// request and response: what a handler sees of one HTTP exchange.
//
// A request is read-only and borrows everything from the connection's buffers: its
// string_views are valid until the handler returns (copy what you keep). A response is
// filled by the handler; the server writes it after the handler returns, unless the handler
// streamed it with write(), which sends each piece before returning (chunked in HTTP/1.1).
// Thread safety: both belong to the one thread running the handler.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace endless::http {

struct header {
  std::string_view name;
  std::string_view value;
};

class response;
namespace detail {
struct access;
/// Where a streamed response goes: the connection (HTTP/1.1 or an HTTP/2 stream), blocking
/// up to write_timeout. The first call also sends the head.
class body_sink {
 public:
  virtual bool write_body(response& res, std::string_view data) = 0;

 protected:
  ~body_sink() = default;
};
}  // namespace detail

class request {
 public:
  std::string_view method() const noexcept { return method_; }
  /// As sent: "/items/7?x=1", or an absolute-form "http://host/items/7".
  std::string_view target() const noexcept { return target_; }
  /// The path of the target ("/items/7"), still percent-encoded.
  std::string_view path() const noexcept { return path_; }
  /// After '?', raw ("x=1&y=2"); empty if none.
  std::string_view query() const noexcept { return query_; }
  /// The first field named `name` (case-insensitive).
  std::optional<std::string_view> header(std::string_view name) const noexcept;
  std::span<const struct header> headers() const noexcept { return {headers_, header_count_}; }
  /// A route parameter: "{id}" in "/items/{id}"; empty if the route has none by that name.
  std::string_view param(std::string_view name) const noexcept;
  /// The percent-decoded value of `key` in the query ('+' is a space), if present.
  std::optional<std::string> query_value(std::string_view key) const;
  std::string_view body() const noexcept { return body_; }
  /// 1 for HTTP/1.x, 2 for HTTP/2; version_minor() is 0 or 1 for HTTP/1.x, 0 for HTTP/2.
  int version_major() const noexcept { return version_major_; }
  int version_minor() const noexcept { return version_minor_; }
  /// Over TLS: true, the name the client asked for (SNI, may be empty) and the subject of
  /// its verified certificate ("" without one).
  bool secure() const noexcept { return secure_; }
  std::string_view server_name() const noexcept { return server_name_; }
  std::string_view client_certificate_subject() const noexcept { return client_subject_; }
  /// The peer's address ("127.0.0.1:53412", "[::1]:53412", or "" for unix sockets).
  std::string_view remote_address() const noexcept { return remote_; }

 private:
  friend struct detail::access;
  std::string_view method_, target_, path_, query_, body_, remote_;
  std::string_view server_name_, client_subject_;
  const struct header* headers_ = nullptr;
  std::size_t header_count_ = 0;
  int version_major_ = 1;
  int version_minor_ = 1;
  bool secure_ = false;
  mutable std::vector<std::pair<std::string_view, std::string_view>> params_;
};

class response {
 public:
  response& status(int code) noexcept {
    status_ = code;
    return *this;
  }
  int status() const noexcept { return status_; }
  /// Adds a header field. Content-Length, Transfer-Encoding, Date and Connection are the
  /// server's to write and are ignored here.
  response& header(std::string_view name, std::string_view value);
  /// The body, with its Content-Type.
  void text(std::string_view body) { send_typed(body, "text/plain; charset=utf-8"); }
  void html(std::string_view body) { send_typed(body, "text/html; charset=utf-8"); }
  void json(std::string_view body) { send_typed(body, "application/json"); }
  void send(std::string_view body, std::string_view content_type = {});
  /// Streams `data` now (chunked transfer coding in HTTP/1.1). Blocks while the client is
  /// slow, up to the server's write_timeout. Returns false once the client is gone.
  bool write(std::string_view data);
  bool streaming() const noexcept { return streaming_; }
  /// The body's size so far: what send() set plus what write() streamed (for access logs).
  std::uint64_t body_bytes() const noexcept { return body_.size() + streamed_; }
  /// A trailer field, sent after the body (HTTP/2; HTTP/1.1 sends the response chunked to
  /// carry it; HTTP/1.0 drops it). Add trailers before the last write() or before returning.
  response& trailer(std::string_view name, std::string_view value);

 private:
  friend struct detail::access;
  // send() with a Content-Type of ours (no CR or LF to look for).
  void send_typed(std::string_view body, std::string_view content_type);
  int status_ = 200;
  std::string headers_;   ///< "Name: value\r\n" ...
  std::string trailers_;  ///< the same form
  std::string body_;
  bool streaming_ = false;
  std::uint64_t streamed_ = 0;
  bool chunked_ = false;
  bool head_only_ = false;  ///< a HEAD request: write the head, never the body
  bool close_ = false;      ///< the connection ends after this response
  bool http10_ = false;     ///< the request was HTTP/1.0: no chunked coding
  bool ok_ = true;          ///< streaming: the client is still there
  detail::body_sink* sink_ = nullptr;
  std::string_view date_;
};

const char* reason_phrase(int status) noexcept;

}  // namespace endless::http
