// Request smuggling and desync: a table of malformed and ambiguous HTTP/1.1 requests sent on
// raw sockets to http_helper. Each row is one CTest case: the exact bytes, the answers RFC 9112
// and RFC 9110 call for, and whether the connection must close. Every row is followed, in the
// same write, by a valid request (kFollowUp). When the row must close the connection, that
// request is the smuggled one: the answers are the row's own and then EOF, never one more.
// When the row is valid, both are answered, in order, and the follow-up's answer is this
// process's pid. The response stream is split by its own framing, so a body that happens to
// look like a status line is never counted as one.
//
// A row whose `today` is set is one where the server disagrees with the RFC now: the row is
// written to the RFC and fails until the parser is fixed; `today` says what happens instead.
#include <cstdio>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "fixture.hpp"

namespace endless::test {
namespace {

using namespace std::string_literals;

const std::string kFollowUp = "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const std::string kPost = "POST /echo HTTP/1.1\r\nHost: x\r\n";
const std::string kChunked = kPost + "Transfer-Encoding: chunked\r\n\r\n";
constexpr int kMaxBody = 100;  // http_helper --max-body

struct row {
  const char* name;
  std::string bytes;          // sent in one write, followed by kFollowUp
  std::vector<int> statuses;  // the answers to the row's own requests, in order
  bool closes;                // then EOF: kFollowUp is never answered
  int also_ok = 0;            // another status the RFC allows for the row's last answer
  std::string first_body{};   // when set: the first answer's body
  const char* today = nullptr;
};

// Bytes as a C string literal would show them.
std::string show(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\r') {
      out += "\\r";
    } else if (c == '\n') {
      out += "\\n\n";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c >= 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void PrintTo(const row& r, std::ostream* os) {
  *os << r.name;
}

// A request the server must refuse with `status`, and then close: the follow-up is the
// smuggled request. `also_ok`: another status the RFC allows.
row refused(const char* name, std::string bytes, int status, int also_ok = 0) {
  return {name, std::move(bytes), {status}, true, also_ok};
}
// A valid request: answered (its body `body`, when given), and then the follow-up too.
row served(const char* name, std::string bytes, std::string body = {}) {
  return {name, std::move(bytes), {200}, false, 0, std::move(body)};
}
// Answered with `statuses`, and then the connection closes.
row closes_after(const char* name, std::string bytes, std::vector<int> statuses) {
  return {name, std::move(bytes), std::move(statuses), true};
}
// A row the server gets wrong today; `today` says what it does instead.
row gap(row r, const char* today) {
  r.today = today;
  return r;
}

// The rows. Comments cite the section that decides the answer: RFC 9112 unless marked 9110.
std::vector<row> rows() {
  const std::string host = "Host: x\r\n";
  const std::string get = "GET / HTTP/1.1\r\n";
  const std::string smuggled = "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string length = std::to_string(smuggled.size());
  char hex[8];
  std::snprintf(hex, sizeof hex, "%zx", smuggled.size());
  const std::string chunk = hex + "\r\n"s + smuggled + "\r\n0\r\n\r\n";  // one chunk: smuggled
  const char* kLaxExtension = "accepted (200): chunk extensions are only checked for CTLs";
  return {
      // ---- Content-Length (§6.3 rule 5; RFC 9110 §8.6)
      // §6.3(5): an invalid Content-Length in a request: 400, then close.
      refused("cl_conflicting_fields", kPost + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
              400),
      refused("cl_conflicting_list", kPost + "Content-Length: 3, 4\r\n\r\nabcd", 400),
      // 9110 §8.6: identical values (repeated fields or a list) MAY be taken as one value (or
      // rejected); the server takes them, so the body is that long and the follow-up is next.
      served("cl_identical_fields", kPost + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
             "abc"),
      served("cl_identical_list", kPost + "Content-Length: 1,1\r\n\r\na", "a"),
      // 9110 §8.6: Content-Length = 1*DIGIT: no sign, no hex, no inner space, not empty.
      refused("cl_plus", kPost + "Content-Length: +5\r\n\r\nhello", 400),
      refused("cl_minus", kPost + "Content-Length: -1\r\n\r\n", 400),
      refused("cl_hex", kPost + "Content-Length: 0x10\r\n\r\n0123456789abcdef", 400),
      refused("cl_inner_space", kPost + "Content-Length: 1 0\r\n\r\n0123456789", 400),
      refused("cl_empty", kPost + "Content-Length: \r\n\r\n", 400),
      // 9110 §8.6: leading zeros are digits like any other.
      served("cl_leading_zeros", kPost + "Content-Length: 003\r\n\r\nabc", "abc"),
      // 9110 §8.6: the value is valid, only too large (413, 9110 §15.5.14); refusing it as
      // unparsable (400) also keeps it from wrapping, which is what §8.6 asks.
      refused("cl_overflow", kPost + "Content-Length: 99999999999999999999999\r\n\r\n", 413, 400),
      // 9110 §15.5.14: more than max_body_bytes.
      refused("cl_over_max_body", kPost + "Content-Length: 101\r\n\r\n" + std::string(101, 'b'),
              413),
      // §6.2: the body is octets, not a request: a request inside it is never served.
      served("cl_body_holds_a_request", kPost + "Content-Length: " + length + "\r\n\r\n" + smuggled,
             smuggled),

      // ---- Transfer-Encoding (§6.1, §6.3 rules 3-4)
      // §6.1: with Content-Length too, the server MAY reject and MUST close; it rejects.
      refused("te_and_cl",
              kPost + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
      refused("cl_and_te_smuggling_a_request",
              kPost + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunk, 400),
      refused("te_cl_zero",
              kPost + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk, 400),
      // §6.3(4): chunked present but not the final coding: 400, then close.
      refused("te_chunked_identity",
              kPost + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
      refused("te_chunked_then_identity_field",
              kPost + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
              400),
      refused("te_gzip_only", kPost + "Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
      refused("te_xchunked", kPost + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
      refused("te_empty", kPost + "Transfer-Encoding: \r\n\r\n0\r\n\r\n", 400),
      // §7: chunked MUST NOT be applied twice; the length can't be found reliably.
      refused("te_chunked_twice", kPost + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
              400),
      // §6.1: a coding the server does not know ("identity" left the registry with RFC 7230):
      // 501; the body can't be framed, so the connection closes.
      refused("te_identity_chunked",
              kPost + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
      // §6.1: Transfer-Encoding in HTTP/1.0: the framing is faulty (400), even with a
      // Content-Length, and the connection closes.
      refused("te_in_http10", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
              400),
      refused("te_and_cl_in_http10",
              "POST /echo HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              "0\r\n\r\n",
              400),
      // §7: transfer-coding names are case-insensitive.
      served("te_uppercase", kPost + "Transfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
             "abc"),
      // §5.1: whitespace between field name and colon: 400.
      refused("te_space_before_colon", kPost + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
      // 9110 §5.5: VT is a CTL, not whitespace.
      refused("te_vertical_tab", kPost + "Transfer-Encoding:\x0b"s + "chunked\r\n\r\n0\r\n\r\n",
              400),
      // §5.2: obs-fold in a request: 400 (or unfold; the server rejects).
      refused("te_obs_fold", kPost + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),

      // ---- chunked bodies (§7.1)
      // §7.1: chunk-size = 1*HEXDIG. 2^64 cannot be held: 413 for a chunk larger than the
      // server takes (9110 §15.5.14), or 400 refusing the numeral; never a wrapped size.
      refused("chunk_size_overflow", kChunked + "10000000000000000\r\nabc\r\n0\r\n\r\n", 413, 400),
      // 9110 §15.5.14: in range, but more than max_body_bytes once the data comes.
      refused("chunk_size_huge",
              kChunked + "ffffffffffffffff\r\n" + std::string(kMaxBody + 28, 'd'), 413),
      refused("chunk_size_leading_space", kChunked + " 3\r\nabc\r\n0\r\n\r\n", 400),
      // §7.1.1: chunk-ext = *( BWS ";" ... ): whitespace after the size only before a ';'.
      gap(refused("chunk_size_trailing_space", kChunked + "3 \r\nabc\r\n0\r\n\r\n", 400),
          "accepted (200): the decoder's size_bws state takes a CR after the whitespace"),
      refused("chunk_size_hex_prefix", kChunked + "0x3\r\nabc\r\n0\r\n\r\n", 400),
      refused("chunk_size_negative", kChunked + "-3\r\nabc\r\n0\r\n\r\n", 400),
      refused("chunk_size_missing", kChunked + "\r\nabc\r\n0\r\n\r\n", 400),
      // §2.2, §7.1: the chunk-size line ends with CRLF.
      refused("chunk_size_bare_lf", kChunked + "3\nabc\r\n0\r\n\r\n", 400),
      refused("chunk_size_bare_cr", kChunked + "3\rabc\r\n0\r\n\r\n", 400),
      // §7.1: chunk-data is exactly chunk-size octets, then CRLF.
      refused("chunk_data_longer_than_size", kChunked + "3\r\nabcd\r\n0\r\n\r\n", 400),
      refused("chunk_data_bare_lf", kChunked + "3\r\nabc\n0\r\n\r\n", 400),
      refused("chunk_short_size_hides_a_request",
              kChunked + "3\r\nabc" + smuggled + "\r\n0\r\n\r\n", 400),
      // A chunked head whose body never comes: the next request is read as the body (its
      // "GET" is no chunk size), never as a request.
      refused("chunk_body_missing", kChunked, 400),
      // §7.1: a request inside chunk data is data.
      served("chunk_data_holds_a_request", kChunked + chunk, smuggled),
      // §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ),
      // ignored when not understood.
      served("chunk_ext_valid", kChunked + "3;name=value\r\nabc\r\n0\r\n\r\n", "abc"),
      served("chunk_ext_valid_quoted_and_last",
             kChunked + "3;a=\"b c\";d\r\nabc\r\n0;last=1\r\n\r\n", "abc"),
      served("chunk_ext_valid_bws", kChunked + "3 ; a = b\r\nabc\r\n0\r\n\r\n", "abc"),
      // §7.1.1: chunk-ext-name = token (not empty); chunk-ext-val = token / quoted-string.
      gap(refused("chunk_ext_empty_name", kChunked + "3;\r\nabc\r\n0\r\n\r\n", 400), kLaxExtension),
      gap(refused("chunk_ext_no_name", kChunked + "3;=v\r\nabc\r\n0\r\n\r\n", 400), kLaxExtension),
      gap(refused("chunk_ext_unterminated_quote", kChunked + "3;a=\"b\r\nabc\r\n0\r\n\r\n", 400),
          kLaxExtension),
      // 9110 §5.6.2, §5.6.4: no CTL in a token or a quoted-string; §2.2: no bare LF.
      refused("chunk_ext_nul", kChunked + "3;a\0b\r\nabc\r\n0\r\n\r\n"s, 400),
      refused("chunk_ext_bare_lf", kChunked + "3;a\nabc\r\n0\r\n\r\n", 400),
      // §7.1.2: trailer-section = *( field-line CRLF ), then CRLF.
      served("chunk_trailer_valid", kChunked + "3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n", "abc"),
      refused("chunk_trailer_obs_fold", kChunked + "0\r\nX-Sum: 1\r\n 2\r\n\r\n", 400),
      gap(refused("chunk_trailer_bad_name", kChunked + "0\r\nBad Name: 1\r\n\r\n", 400),
          "accepted (200): trailer lines are only checked for CTLs and a leading space"),
      // The last chunk without the empty line that ends the trailer section: the next
      // request's lines would be trailer fields, and "GET /pid HTTP/1.1" is no field-line
      // (§5.1): 400.
      gap(refused("chunk_last_without_final_crlf", kChunked + "3\r\nabc\r\n0\r\n", 400),
          "the follow-up is swallowed as trailer fields: 200 for the POST, and the connection "
          "stays open (its Connection: close was read as a trailer)"),

      // ---- Host (§3.2)
      // §3.2: 400 for an HTTP/1.1 request without Host, with two, or with an invalid one.
      refused("host_missing", get + "\r\n", 400),
      refused("host_twice", get + "Host: x\r\nHost: y\r\n\r\n", 400),
      refused("host_twice_same", get + "Host: x\r\nHost: x\r\n\r\n", 400),
      gap(refused("host_invalid", get + "Host: a b\r\n\r\n", 400),
          "accepted (200): the Host value is not checked against uri-host [ \":\" port ]"),
      refused("host_missing_with_absolute_form", "GET http://x/pid HTTP/1.1\r\n\r\n", 400),
      // §3.2: Host is required of HTTP/1.1 only. HTTP/1.0 without keep-alive closes after
      // its response (§9.3), so the follow-up is never read.
      closes_after("host_missing_in_http10", "GET / HTTP/1.0\r\n\r\n", {200}),

      // ---- request line (§3)
      // §3: an invalid request-line SHOULD get 400; §3.1: method = token.
      refused("method_invalid_char", "G(T / HTTP/1.1\r\n" + host + "\r\n", 400),
      refused("method_empty", " / HTTP/1.1\r\n" + host + "\r\n", 400),
      refused("method_nul", "GE\0T / HTTP/1.1\r\n"s + host + "\r\n", 400),
      // §3: one SP between the parts; lenient whitespace is a MAY the server declines.
      refused("request_line_double_space", "GET  / HTTP/1.1\r\n" + host + "\r\n", 400),
      refused("request_line_tabs", "GET\t/\tHTTP/1.1\r\n" + host + "\r\n", 400),
      // §3.2: no whitespace or CTL inside the target (and no autocorrection).
      refused("target_space", "GET /a b HTTP/1.1\r\n" + host + "\r\n", 400),
      refused("target_nul", "GET /\0 HTTP/1.1\r\n"s + host + "\r\n", 400),
      refused("target_del", "GET /\x7f HTTP/1.1\r\n" + host + "\r\n", 400),
      refused("target_bare_cr", "GET /\r HTTP/1.1\r\n" + host + "\r\n", 400),
      refused("target_non_ascii", "GET /\xff HTTP/1.1\r\n" + host + "\r\n", 400),
      // §3.2: origin-form starts with "/"; asterisk-form is for OPTIONS only (§3.2.4).
      refused("target_relative", "GET pid HTTP/1.1\r\n" + host + "\r\n", 400),
      refused("target_asterisk_for_get", "GET * HTTP/1.1\r\n" + host + "\r\n", 400),
      // 9110 §15.5.15: longer than the server takes (8 KiB).
      refused("target_too_long", "GET /" + std::string(8192, 'a') + " HTTP/1.1\r\n" + host + "\r\n",
              414),
      // §3.2.2: a server MUST accept absolute-form; the path is what is served.
      served("absolute_form", "GET http://x/pid HTTP/1.1\r\n" + host + "\r\n"),
      served("absolute_form_without_path", "GET http://x HTTP/1.1\r\n" + host + "\r\n",
             "Hello Zero-Downtime!\n"),
      // §3.2.2: absolute-URI, whose scheme is case-insensitive (RFC 3986 §3.1).
      gap(served("absolute_form_uppercase_scheme", "GET HTTP://x/pid HTTP/1.1\r\n" + host + "\r\n"),
          "400: only \"http://\" and \"https://\" in lower case are taken as absolute-form"),
      // §2.3: HTTP-name is case-sensitive; HTTP-version = HTTP-name "/" DIGIT "." DIGIT.
      refused("version_lowercase", "GET / http/1.1\r\n" + host + "\r\n", 400),
      refused("version_two_digit_minor", "GET / HTTP/1.10\r\n" + host + "\r\n", 400),
      refused("version_trailing_space", "GET / HTTP/1.1 \r\n" + host + "\r\n", 400),
      refused("version_missing", "GET /pid\r\n" + host + "\r\n", 400),
      // 9110 §15.6.6: another major version: 505.
      refused("version_2", "GET / HTTP/2.0\r\n" + host + "\r\n", 505),

      // ---- field lines (§5; RFC 9110 §5.5)
      // §5.1: no whitespace between field name and colon: 400.
      refused("field_space_before_colon", get + "Host : x\r\n\r\n", 400),
      // 9110 §5.1: field-name = token.
      refused("field_name_with_space", get + host + "Bad Name: v\r\n\r\n", 400),
      refused("field_name_empty", get + host + ": v\r\n\r\n", 400),
      refused("field_without_colon", get + host + "NoColon\r\n\r\n", 400),
      refused("field_name_nul", get + host + "X\0Y: v\r\n\r\n"s, 400),
      // 9110 §5.5: CR, LF and NUL in a value MUST be rejected (or replaced by SP); other
      // CTLs and DEL are invalid too.
      refused("field_value_nul", get + host + "X: a\0b\r\n\r\n"s, 400),
      refused("field_value_ctl", get + host + "X: a\x01" + "b\r\n\r\n", 400),
      refused("field_value_del", get + host + "X: a\x7f" + "b\r\n\r\n", 400),
      // §2.2: a bare CR is invalid (or replaced by SP).
      refused("field_value_bare_cr", get + host + "X: a\rb\r\n\r\n", 400),
      refused("field_bare_cr_line_end", get + "Host: x\rX: y\r\n\r\n", 400),
      // 9110 §5.5: HTAB and obs-text are valid in a value.
      served("field_value_tab", "GET /pid HTTP/1.1\r\n" + host + "X: a\tb\r\n\r\n"),
      served("field_value_obs_text", "GET /pid HTTP/1.1\r\n" + host + "X: caf\xe9\r\n\r\n"),
      // §5.2: obs-fold in a request: 400 (or unfold; the server rejects).
      refused("obs_fold", get + host + "X: a\r\n  b\r\n\r\n", 400),
      // §2.2: whitespace before the first field line: reject (or ignore the line).
      refused("whitespace_before_first_field", get + " Host: x\r\n\r\n", 400),
      // §2.2: a bare LF as line terminator MAY be accepted; the server declines.
      refused("bare_lf_after_request_line", "GET / HTTP/1.1\n" + host + "\r\n", 400),
      refused("bare_lf_after_field", get + "Host: x\nX: y\r\n\r\n", 400),
      refused("bare_lf_ends_head", get + host + "\n", 400),
      refused("all_bare_lf", "GET / HTTP/1.1\nHost: x\n\n", 400),
      // §2.2: a server SHOULD ignore at least one empty line before a request-line.
      served("empty_lines_before_request", "\r\n\r\nGET /pid HTTP/1.1\r\n" + host + "\r\n"),

      // ---- pipelining and the end of a connection (§9.3, §9.6)
      // §9.3.2: pipelined requests are answered in order, up to the bad one; §9.6: nothing
      // after it is read.
      closes_after("valid_then_bad", get + host + "\r\n" + get + "Host : x\r\n\r\n", {200, 400}),
      refused("bad_then_valid", get + "Host : x\r\n\r\n" + get + host + "\r\n", 400),
      // §9.6: after "Connection: close" no further request is processed.
      closes_after("close_then_request", get + host + "Connection: close\r\n\r\n", {200}),
  };
}

// One response out of a stream, found by its own framing (§6.3).
struct answer {
  int status = 0;
  bool close = false;  // Connection: close
  std::string body;
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
  return out;
}

// Splits `data` into responses; "" if it is a whole number of them, or what is wrong.
std::string split_answers(std::string_view data, std::vector<answer>& out) {
  while (!data.empty()) {
    if (data.size() < 13 || data.substr(0, 9) != "HTTP/1.1 " || data[12] != ' ') {
      return "not a status line at: " + show(data.substr(0, 40));
    }
    size_t end = data.find("\r\n\r\n");
    if (end == std::string_view::npos) return "a head without its end";
    answer a;
    a.status = std::atoi(std::string(data.substr(9, 3)).c_str());
    std::optional<size_t> length;
    bool chunked = false;
    std::string_view head = data.substr(0, end + 2);
    for (size_t at = head.find("\r\n") + 2; at < head.size();) {
      size_t eol = head.find("\r\n", at);
      std::string line = lower(head.substr(at, eol - at));
      at = eol + 2;
      if (line.rfind("content-length: ", 0) == 0) length = std::stoul(line.substr(16));
      if (line == "transfer-encoding: chunked") chunked = true;
      if (line == "connection: close") a.close = true;
    }
    data.remove_prefix(end + 4);
    if ((a.status >= 100 && a.status < 200) || a.status == 204 || a.status == 304) {
      // no body
    } else if (chunked) {
      for (;;) {
        size_t eol = data.find("\r\n");
        if (eol == std::string_view::npos) return "a cut chunk";
        size_t size = std::stoul(std::string(data.substr(0, eol)), nullptr, 16);
        data.remove_prefix(eol + 2);
        if (size == 0) {
          size_t tend = data.find("\r\n\r\n");
          if (data.substr(0, 2) == "\r\n") {
            data.remove_prefix(2);
          } else if (tend != std::string_view::npos) {
            data.remove_prefix(tend + 4);
          } else {
            return "a cut trailer";
          }
          break;
        }
        if (data.size() < size + 2) return "a cut chunk";
        a.body.append(data.substr(0, size));
        data.remove_prefix(size + 2);
      }
    } else if (length) {
      if (data.size() < *length) return "a cut body";
      a.body = data.substr(0, *length);
      data.remove_prefix(*length);
    } else {
      a.body = data;  // delimited by the close
      data = {};
    }
    out.push_back(std::move(a));
  }
  return "";
}

class smuggling_test : public core_fixture, public ::testing::WithParamInterface<row> {};

TEST_P(smuggling_test, answered_per_rfc_and_never_desynced) {
  const row& r = GetParam();
  pid_t pid = start({"--max-body", std::to_string(kMaxBody)});
  ASSERT_GT(port, 0);
  const std::string sent = r.bytes + kFollowUp;
  auto got = raw_exchange(port, sent, 3000);
  std::vector<answer> answers;
  std::string bad_stream = split_answers(got.data, answers);
  std::vector<int> seen;
  for (const auto& a : answers)
    seen.push_back(a.status);
  std::vector<int> want = r.statuses;
  if (r.also_ok && seen.size() == want.size() && !seen.empty() && seen.back() == r.also_ok) {
    want.back() = r.also_ok;
  }
  if (!r.closes) want.push_back(200);
  std::string context = std::string(r.today ? "\nKNOWN GAP, the server today: " : "") +
                        (r.today ? r.today : "") + "\nsent:\n" + show(sent) + "\nreceived:\n" +
                        show(got.data);

  // What came back, for the XML/JSON report (--gtest_output): the table's actual column.
  std::string summary;
  for (int status : seen)
    summary += std::to_string(status) + " ";
  summary += got.closed ? "then EOF" : "left open";
  if (!answers.empty() && answers.back().status >= 400) {
    std::string why = answers.back().body;  // "400 Bad Request: bare LF in request head\n"
    summary += " (" + why.substr(0, why.find('\n')) + ")";
  }
  RecordProperty("answers", summary);

  EXPECT_EQ(bad_stream, "") << context;
  EXPECT_EQ(seen, want) << context;
  EXPECT_TRUE(got.closed) << "the connection was left open" << context;
  if (seen == want && !answers.empty()) {
    if (r.closes) {
      EXPECT_TRUE(answers.back().close) << "the last answer must say Connection: close" << context;
    } else {
      EXPECT_EQ(answers.back().body, std::to_string(pid)) << context;
    }
    if (!r.first_body.empty()) {
      EXPECT_EQ(answers.front().body, r.first_body) << context;
    }
  }
  EXPECT_TRUE(http_get(port, "/").ok) << "the server did not survive";
}

INSTANTIATE_TEST_SUITE_P(rows, smuggling_test, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<row>& param) {
                           return std::string(param.param.name);
                         });

}  // namespace
}  // namespace endless::test
