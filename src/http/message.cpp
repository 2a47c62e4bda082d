#include "endless/http/message.hpp"

#include <cstring>

#include "bytes.hpp"
#include "http1_parser.hpp"

namespace endless::http {

std::optional<std::string_view> request::header(std::string_view name) const noexcept {
  for (std::size_t i = 0; i < header_count_; ++i) {
    if (h1::iequals(headers_[i].name, name)) return headers_[i].value;
  }
  return std::nullopt;
}

std::string_view request::param(std::string_view name) const noexcept {
  for (const auto& [k, v] : params_) {
    if (k == name) return v;
  }
  return {};
}

namespace {
int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}
}  // namespace

std::optional<std::string> request::query_value(std::string_view key) const {
  std::string_view q = query_;
  while (!q.empty()) {
    std::size_t amp = q.find('&');
    std::string_view pair = q.substr(0, amp);
    std::size_t eq = pair.find('=');
    if (decode(pair.substr(0, eq)) == key) {
      return eq == std::string_view::npos ? std::string() : decode(pair.substr(eq + 1));
    }
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

namespace {

// The fields the server writes itself. Length first: most names are rejected without a
// comparison.
bool reserved_field(std::string_view name) noexcept {
  switch (name.size()) {
    case 4:
      return h1::iequals(name, "date");
    case 10:
      return h1::iequals(name, "connection");
    case 14:
      return h1::iequals(name, "content-length");
    case 17:
      return h1::iequals(name, "transfer-encoding");
    default:
      return false;
  }
}

// "name: value\r\n" at the end of `out`, in one resize.
void append_field(std::string& out, std::string_view name, std::string_view value) {
  const std::size_t at = out.size();
  out.resize(at + name.size() + value.size() + 4);
  char* p = out.data() + at;
  // (An empty view may have no data at all, and memcpy wants a pointer even for 0 bytes.)
  if (!name.empty()) std::memcpy(p, name.data(), name.size());
  p += name.size();
  std::memcpy(p, ": ", 2);
  if (!value.empty()) std::memcpy(p + 2, value.data(), value.size());
  std::memcpy(p + 2 + value.size(), "\r\n", 2);
}

}  // namespace

response& response::header(std::string_view name, std::string_view value) {
  if (reserved_field(name)) return *this;
  // A CR or LF in a name or value would let a handler split the response: drop the field.
  if (bytes::has_cr_or_lf(name) || bytes::has_cr_or_lf(value)) return *this;
  append_field(headers_, name, value);
  return *this;
}

response& response::trailer(std::string_view name, std::string_view value) {
  if (reserved_field(name)) return *this;
  if (bytes::has_cr_or_lf(name) || bytes::has_cr_or_lf(value)) return *this;
  append_field(trailers_, name, value);
  return *this;
}

bool response::write(std::string_view data) {
  if (!ok_ || !sink_) return false;
  if (!sink_->write_body(*this, data)) ok_ = false;
  if (ok_) streamed_ += data.size();
  return ok_;
}

void response::send(std::string_view body, std::string_view content_type) {
  if (!content_type.empty()) header("Content-Type", content_type);
  body_.assign(body);
}

void response::send_typed(std::string_view body, std::string_view content_type) {
  append_field(headers_, "Content-Type", content_type);
  body_.assign(body);
}

const char* reason_phrase(int status) noexcept {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 417:
      return "Expectation Failed";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

}  // namespace endless::http
