// HTTP/1.1 request parsing (RFC 9112), strict and zero-copy (internal).
//
// The head is parsed in place: every string_view in request_head points into the caller's
// buffer, which must stay unchanged while the head is used. Strictness is deliberate: the
// ambiguous forms that let two parsers disagree about where a request ends (bare LF,
// obs-fold, whitespace before the colon, conflicting Content-Length, Transfer-Encoding with
// Content-Length) are rejected with the status RFC 9112 asks for, and the caller then closes
// the connection, so nothing after a bad request is ever read as a request.
// Thread safety: stateless functions; a chunked_decoder belongs to one connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "endless/http/message.hpp"

namespace endless::http::h1 {

using header = endless::http::header;

enum class body_kind : std::uint8_t { none, length, chunked };

struct request_head {
  std::string_view method;
  std::string_view target;
  int version_minor = 1;  // HTTP/1.<minor>
  std::vector<header> headers;
  std::size_t length = 0;  // bytes of the head, final CRLF included
  body_kind body = body_kind::none;
  std::uint64_t content_length = 0;
  bool keep_alive = true;
  bool expect_continue = false;

  void clear() {
    headers.clear();
    length = 0;
    body = body_kind::none;
    content_length = 0;
    keep_alive = true;
    expect_continue = false;
  }
  // Case-insensitive; the first field with that name.
  const header* find(std::string_view name) const noexcept;
};

struct error {
  int status = 0;           // 400, 413, 414, 431, 501, 505
  const char* reason = "";  // a short phrase for the log and the response body
};

enum class result : std::uint8_t { incomplete, done, bad };

struct limits {
  std::size_t max_header_bytes = 1 << 20;  // Go's DefaultMaxHeaderBytes
  std::size_t max_target = 8 << 10;        // longer: 414
  std::size_t max_headers = 100;           // more fields: 431
};

// Looks for the end of the head in buf[0..], resuming at `scan_from` (updated), so a head
// that arrives byte by byte is scanned once. Returns done with `head_length` set, incomplete,
// or bad (bare LF or CR, or too large).
result find_head_end(std::string_view buf, std::size_t& scan_from, std::size_t& head_length,
                     const limits& lim, error& err) noexcept;

// Parses a complete head (buf.substr(0, head_length) from find_head_end).
result parse_head(std::string_view head, request_head& out, const limits& lim, error& err) noexcept;

// The one-pass way for a head that came whole, as nearly all do: parses the head at the
// start of `data` (more may follow). done, with out.length set, only for a whole, valid head
// within the limits, with the same result parse_head gives it; incomplete for anything else,
// and then find_head_end and parse_head decide.
result parse_whole_head(std::string_view data, request_head& out, const limits& lim) noexcept;

// Incremental chunked body decoder (RFC 9112 §7.1): feed it bytes as they come.
class chunked_decoder {
 public:
  // Consumes from `in` (sets `consumed`), appends data to `body`; done after the trailer.
  result feed(std::string_view in, std::size_t& consumed, std::string& body, std::size_t max_body,
              error& err);
  void reset() noexcept { *this = chunked_decoder(); }

 private:
  enum class state : std::uint8_t { size, size_bws, ext, size_lf, data, data_cr, data_lf, trailer };
  state state_ = state::size;
  std::uint64_t remaining_ = 0;
  int digits_ = 0;
  std::size_t trailer_bytes_ = 0;
  std::size_t line_start_ = 0;  // trailer: bytes in the current trailer line
  bool cr_ = false;
  bool colon_ = false;  // trailer: the current line's name has ended
  // Where in a chunk extension we are (RFC 9112 §7.1.1):
  //   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
  enum class ext : std::uint8_t {
    before_name,
    name,
    after_name,
    before_value,
    token,
    quoted,
    escape,
    after_value
  };
  ext ext_ = ext::before_name;
};

bool iequals(std::string_view a, std::string_view b) noexcept;

}  // namespace endless::http::h1
