#include "http1_parser.hpp"

#include "bytes.hpp"

#include <array>
#include <charconv>
#include <cstring>

namespace endless::http::h1 {
namespace {

// A table of DIGIT / ALPHA and the characters in `extra`.
constexpr std::array<bool, 256> alnum_and(std::string_view extra) {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c)
    t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c)
    t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c)
    t[c] = true;
  for (char c : extra)
    t[static_cast<unsigned char>(c)] = true;
  return t;
}

// RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
constexpr auto kTchar = alnum_and("!#$%&'*+-.^_`|~");

// Host = uri-host [ ":" port ] (RFC 9110 §7.2; RFC 3986 §3.2.2): reg-name, IPv4 or
// [IP-literal] characters.
constexpr auto kHostChar = alnum_and("-._~%!$&'()*+,;=:[]");

bool is_token(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (!kTchar[c]) return false;
  }
  return true;
}

// field-value characters (RFC 9110 §5.5): VCHAR, obs-text, SP, HTAB. No CTL, no DEL.
bool is_field_char(unsigned char c) noexcept {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

char lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

result fail(error& err, int status, const char* reason) noexcept {
  err = {status, reason};
  return result::bad;
}

// Calls fn(element) for each element of a comma-separated list (RFC 9110 §5.6.1), trimmed.
template <class Fn>
void for_each_element(std::string_view list, Fn&& fn) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view item = trim_ows(list.substr(0, comma));
    if (!item.empty()) fn(item);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

const header* request_head::find(std::string_view name) const noexcept {
  for (const auto& h : headers) {
    if (iequals(h.name, name)) return &h;
  }
  return nullptr;
}

result find_head_end(std::string_view buf, size_t& scan_from, size_t& head_length,
                     const limits& lim, error& err) noexcept {
  size_t pos = scan_from;
  while (pos < buf.size()) {
    const void* nl = std::memchr(buf.data() + pos, '\n', buf.size() - pos);
    if (!nl) break;
    size_t i = static_cast<size_t>(static_cast<const char*>(nl) - buf.data());
    // RFC 9112 §2.2 allows a lenient bare LF; accepting it is how request smuggling starts.
    if (i == 0 || buf[i - 1] != '\r') return fail(err, 400, "bare LF in request head");
    if (i >= 3 && buf[i - 2] == '\n') {
      head_length = i + 1;
      scan_from = 0;
      if (head_length > lim.max_header_bytes) return fail(err, 431, "request head too large");
      return result::done;
    }
    pos = i + 1;
    scan_from = pos;
  }
  if (buf.size() > lim.max_header_bytes) return fail(err, 431, "request head too large");
  scan_from = buf.size();  // no LF up to here (the checks look back from each LF)
  return result::incomplete;
}

namespace {

// The request line of nearly every request, "METHOD /path HTTP/1.x\r\n", in one pass over
// it; false for anything else (other target forms, other versions, and every error), which
// the full checks below then judge. Sets `pos` past its CRLF.
bool common_request_line(std::string_view buf, request_head& out, const limits& lim,
                         size_t& pos) noexcept {
  const char* d = buf.data();
  const size_t n = buf.size();
  size_t m = 0;
  while (m < n && kTchar[static_cast<unsigned char>(d[m])])
    ++m;
  if (m == 0 || m >= n || d[m] != ' ') return false;
  const size_t t = m + 1;
  const size_t len = bytes::visible_run(d + t, n - t);
  if (len == 0 || d[t] != '/' || len > lim.max_target) return false;
  const size_t v = t + len;  // the SP before the version
  if (n - v < 11 || d[v] != ' ' || std::memcmp(d + v + 1, "HTTP/1.", 7) != 0) return false;
  const char minor = d[v + 8];
  if (minor < '0' || minor > '9' || d[v + 9] != '\r' || d[v + 10] != '\n') return false;
  out.method = std::string_view(d, m);
  out.target = std::string_view(d + t, len);
  out.version_minor = minor - '0';
  pos = v + 11;
  return true;
}

// exact: `buf` is a whole head (find_head_end's), and a failure is the verdict.
// Otherwise `buf` begins with a head that may be cut short or followed by more; done only
// for a whole, valid head within the limits (out.length says where it ends), and incomplete
// for anything else: the caller then takes the exact way for the verdict.
result parse(std::string_view buf, request_head& out, const limits& lim, error& err,
             bool exact) noexcept {
  out.clear();
  out.length = exact ? buf.size() : 0;
  size_t pos = 0;
  if (!common_request_line(buf, out, lim, pos)) {
    if (!exact) return result::incomplete;
    const std::string_view head = buf;
    // request-line = method SP request-target SP HTTP-version CRLF  (RFC 9112 §3)
    size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    size_t sp1 = line.find(' ');
    if (sp1 == std::string_view::npos) return fail(err, 400, "malformed request line");
    out.method = line.substr(0, sp1);
    if (!is_token(out.method)) return fail(err, 400, "invalid method");
    size_t sp2 = line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return fail(err, 400, "malformed request line");
    out.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (out.target.empty()) return fail(err, 400, "empty request target");
    if (out.target.size() > lim.max_target) return fail(err, 414, "request target too long");
    for (unsigned char c : out.target) {
      if (c <= 0x20 || c >= 0x7f) return fail(err, 400, "invalid character in request target");
    }
    if (version.size() != 8 || version.compare(0, 5, "HTTP/") != 0 || version[6] != '.' ||
        version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9') {
      return fail(err, 400, "malformed HTTP version");
    }
    if (version[5] != '1') return fail(err, 505, "HTTP version not supported");
    out.version_minor = version[7] - '0';
    if (out.target[0] != '/') {
      // The scheme is case-insensitive (RFC 3986 §3.1).
      auto scheme = [&](std::string_view s) {
        return out.target.size() > s.size() && iequals(out.target.substr(0, s.size()), s);
      };
      bool absolute = scheme("http://") || scheme("https://");
      bool asterisk = out.target == "*" && out.method == "OPTIONS";
      if (!absolute && !asterisk) return fail(err, 400, "invalid request target form");
    }
    pos = eol + 2;
  }

  // field-line = field-name ":" OWS field-value OWS   (RFC 9112 §5)
  size_t hosts = 0;
  bool have_length = false, have_te = false, chunked_last = false, other_coding = false;
  int chunked_count = 0;
  bool connection_close = false, connection_keep_alive = false;
  const char* d = buf.data();
  const size_t size = buf.size();
  // Past this point every failure of the other way is incomplete here.
  auto bad = [&](int status, const char* reason) {
    return exact ? fail(err, status, reason) : result::incomplete;
  };
  auto at = [d](size_t i) { return static_cast<unsigned char>(d[i]); };
  while (pos < size) {
    if (d[pos] == '\r' && pos + 1 < size && d[pos + 1] == '\n') break;  // the empty line
    if (d[pos] == ' ' || d[pos] == '\t') return bad(400, "obs-fold in header");
    // One pass over the line: the name's tchars up to ':', then field characters up to CRLF.
    size_t colon = pos;
    while (colon < size && kTchar[at(colon)])
      ++colon;
    if (colon == pos || colon == size || d[colon] != ':') {
      if (!exact) return result::incomplete;
      std::string_view field = buf.substr(pos, buf.find("\r\n", pos) - pos);
      return bad(400, field.find(':') == std::string_view::npos ? "header without colon"
                                                                : "invalid header name");
    }
    size_t end = colon + 1 + bytes::field_run(d + colon + 1, size - colon - 1);
    if (end + 1 >= size || d[end] != '\r' || d[end + 1] != '\n') {
      return bad(400, "invalid character in header value");
    }
    std::string_view name(d + pos, colon - pos);
    std::string_view value = trim_ows(buf.substr(colon + 1, end - colon - 1));
    pos = end + 2;
    if (out.headers.size() >= lim.max_headers) return bad(431, "too many header fields");
    out.headers.push_back({name, value});

    // The fields that shape the message, found by length first (most names are neither).
    enum class special { none, length, coding, host, connection, expect } kind = special::none;
    switch (name.size()) {
      case 4:
        kind = bytes::iequals_lower(name, "host") ? special::host : special::none;
        break;
      case 6:
        kind = bytes::iequals_lower(name, "expect") ? special::expect : special::none;
        break;
      case 10:
        kind = bytes::iequals_lower(name, "connection") ? special::connection : special::none;
        break;
      case 14:
        kind = bytes::iequals_lower(name, "content-length") ? special::length : special::none;
        break;
      case 17:
        kind = bytes::iequals_lower(name, "transfer-encoding") ? special::coding : special::none;
        break;
      default:
        break;
    }
    if (kind == special::none) continue;
    if (kind == special::length) {
      bool invalid = false;
      for_each_element(value, [&](std::string_view v) {
        std::uint64_t n = 0;
        auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (ec != std::errc{} || p != v.data() + v.size() || v[0] == '+' ||
            (have_length && n != out.content_length)) {
          invalid = true;
        }
        out.content_length = n;
        have_length = true;
      });
      if (invalid || !have_length) return bad(400, "invalid or conflicting Content-Length");
    } else if (kind == special::coding) {
      have_te = true;
      for_each_element(value, [&](std::string_view coding) {
        chunked_last = iequals(coding, "chunked");
        if (chunked_last) {
          ++chunked_count;
        } else {
          other_coding = true;
        }
      });
    } else if (kind == special::host) {
      ++hosts;
      // Host characters only; an invalid one gets 400 (RFC 9112 §3.2).
      if (!bytes::all_in(kHostChar, value)) return bad(400, "invalid Host");
    } else if (kind == special::connection) {
      for_each_element(value, [&](std::string_view opt) {
        if (iequals(opt, "close")) connection_close = true;
        if (iequals(opt, "keep-alive")) connection_keep_alive = true;
      });
    } else if (kind == special::expect) {
      if (iequals(value, "100-continue")) out.expect_continue = true;
    }
  }

  if (!exact) {
    // The empty line, whole, and the head within the limit.
    if (pos + 1 >= size || d[pos] != '\r' || d[pos + 1] != '\n') return result::incomplete;
    if (pos + 2 > lim.max_header_bytes) return result::incomplete;
    out.length = pos + 2;
  }

  // RFC 9112 §3.2: exactly one Host in HTTP/1.1.
  if (out.version_minor >= 1 && hosts != 1) return bad(400, "missing or repeated Host");
  if (hosts > 1) return bad(400, "repeated Host");
  // RFC 9112 §6.1 / §6.3: Transfer-Encoding decides framing; with Content-Length too, or in
  // HTTP/1.0, or without chunked last, the framing is ambiguous: reject.
  if (have_te) {
    if (have_length) return bad(400, "Transfer-Encoding with Content-Length");
    if (out.version_minor == 0) return bad(400, "Transfer-Encoding in HTTP/1.0");
    if (!chunked_last || chunked_count != 1) return bad(400, "chunked is not the final coding");
    if (other_coding) return bad(501, "unsupported transfer coding");
    out.body = body_kind::chunked;
  } else if (have_length && out.content_length > 0) {
    out.body = body_kind::length;
  }
  out.keep_alive = out.version_minor >= 1 ? !connection_close : connection_keep_alive;
  return result::done;
}

}  // namespace

result parse_head(std::string_view head, request_head& out, const limits& lim,
                  error& err) noexcept {
  return parse(head, out, lim, err, true);
}

result parse_whole_head(std::string_view data, request_head& out, const limits& lim) noexcept {
  error unused;
  return parse(data, out, lim, unused, false);
}

result chunked_decoder::feed(std::string_view in, size_t& consumed, std::string& body,
                             size_t max_body, error& err) {
  constexpr int kMaxDigits = 16;           // 2^64 - 1
  constexpr size_t kMaxTrailer = 8 << 10;  // chunk extensions and trailer fields
  size_t i = 0;
  auto done = [&](result r) {
    consumed = i;
    return r;
  };
  while (i < in.size()) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    switch (state_) {
      case state::size: {
        int v = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (v >= 0) {
          if (++digits_ > kMaxDigits) return done(fail(err, 400, "chunk size too large"));
          remaining_ = remaining_ * 16 + static_cast<unsigned>(v);
          ++i;
          break;
        }
        if (digits_ == 0) return done(fail(err, 400, "invalid chunk size"));
        if (c == ';') {
          state_ = state::ext;
          ext_ = ext::before_name;
          ++i;
        } else if (c == ' ' || c == '\t') {
          state_ = state::size_bws;  // RFC 9112 §7.1.1: BWS, then only ';' may follow
          ++i;
        } else if (c == '\r') {
          state_ = state::size_lf;
          ++i;
        } else {
          return done(fail(err, 400, "invalid chunk size"));
        }
        break;
      }
      case state::size_bws:
        if (c == ';') {
          state_ = state::ext;
          ext_ = ext::before_name;
        } else if (c != ' ' && c != '\t') {  // (whitespace, then the line's end: invalid)
          return done(fail(err, 400, "invalid chunk size"));
        }
        if (++trailer_bytes_ > kMaxTrailer) return done(fail(err, 400, "invalid chunk size"));
        ++i;
        break;
      case state::ext: {  // chunk extensions are checked and ignored, and bounded
        if (++trailer_bytes_ > kMaxTrailer) return done(fail(err, 400, "chunk extension too long"));
        bool ws = c == ' ' || c == '\t';
        bool ok = true;
        switch (ext_) {
          case ext::before_name:  // BWS chunk-ext-name
            if (kTchar[c])
              ext_ = ext::name;
            else
              ok = ws;
            break;
          case ext::name:
            if (kTchar[c]) break;
            [[fallthrough]];
          case ext::after_name:  // BWS, then "=" value, or the next ";", or the end
          case ext::after_value:
            if (c == '=' && ext_ != ext::after_value)
              ext_ = ext::before_value;
            else if (c == ';')
              ext_ = ext::before_name;
            else if (c == '\r')
              state_ = state::size_lf;
            else if (ws)
              ext_ = ext_ == ext::after_value ? ext::after_value : ext::after_name;
            else
              ok = false;
            break;
          case ext::before_value:  // BWS, then token / quoted-string
            if (c == '"')
              ext_ = ext::quoted;
            else if (kTchar[c])
              ext_ = ext::token;
            else
              ok = ws;
            break;
          case ext::token:
            if (kTchar[c]) break;
            ext_ = ext::after_value;
            if (c == ';')
              ext_ = ext::before_name;
            else if (c == '\r')
              state_ = state::size_lf;
            else
              ok = ws;
            break;
          case ext::quoted:  // qdtext / quoted-pair (RFC 9110 §5.6.4)
            if (c == '"')
              ext_ = ext::after_value;
            else if (c == '\\')
              ext_ = ext::escape;
            else
              ok = is_field_char(c);
            break;
          case ext::escape:
            ok = is_field_char(c);
            ext_ = ext::quoted;
            break;
        }
        if (!ok) return done(fail(err, 400, "invalid chunk extension"));
        ++i;
        break;
      }
      case state::size_lf:
        if (c != '\n') return done(fail(err, 400, "bare CR in chunk size line"));
        ++i;
        digits_ = 0;
        state_ = remaining_ == 0 ? state::trailer : state::data;
        line_start_ = 0;
        cr_ = false;
        break;
      case state::data: {
        size_t take = static_cast<size_t>(std::min<std::uint64_t>(remaining_, in.size() - i));
        if (body.size() + take > max_body) return done(fail(err, 413, "request body too large"));
        body.append(in.data() + i, take);
        i += take;
        remaining_ -= take;
        if (remaining_ == 0) state_ = state::data_cr;
        break;
      }
      case state::data_cr:
        if (c != '\r') return done(fail(err, 400, "chunk data longer than its size"));
        ++i;
        state_ = state::data_lf;
        break;
      case state::data_lf:
        if (c != '\n') return done(fail(err, 400, "bare CR after chunk data"));
        ++i;
        state_ = state::size;
        break;
      case state::trailer:
        // trailer-section = *( field-line CRLF ) CRLF; fields are checked, then dropped.
        ++i;
        if (++trailer_bytes_ > kMaxTrailer) return done(fail(err, 413, "trailer too large"));
        if (cr_) {
          if (c != '\n') return done(fail(err, 400, "bare CR in trailer"));
          cr_ = false;
          if (line_start_ == 0) return done(result::done);
          line_start_ = 0;
          colon_ = false;
        } else if (c == '\r') {
          // field-line = field-name ":" OWS field-value OWS (RFC 9112 §5): a name, a colon.
          if (line_start_ > 0 && !colon_) return done(fail(err, 400, "invalid trailer field"));
          cr_ = true;
        } else if (c == '\n') {
          return done(fail(err, 400, "bare LF in trailer"));
        } else if (!colon_ && c == ':' && line_start_ > 0) {
          colon_ = true;
          ++line_start_;
        } else if (colon_ ? !is_field_char(c) : !kTchar[c]) {
          return done(fail(err, 400, "invalid trailer field"));
        } else {
          ++line_start_;
        }
        break;
    }
  }
  return done(result::incomplete);
}

}  // namespace endless::http::h1
