// Access to the insides of request and response for the server's own code (internal).
#pragma once

#include "endless/http/message.hpp"

namespace endless::http::detail {

// The status a response goes out with: a handler's code outside 100-999 cannot be written
// in three digits, and clamping it could make a final answer look interim: 500 instead.
constexpr int wire_status(int status) noexcept {
  return status >= 100 && status <= 999 ? status : 500;
}

struct access {
  static std::vector<std::pair<std::string_view, std::string_view>>& params(const request& r) {
    return r.params_;
  }

  static void set(request& r, std::string_view method, std::string_view target,
                  std::string_view path, std::string_view query, const header* headers,
                  std::size_t count, int minor, std::string_view body, std::string_view remote) {
    r.method_ = method;
    r.target_ = target;
    r.path_ = path;
    r.query_ = query;
    r.headers_ = headers;
    r.header_count_ = count;
    r.version_minor_ = minor;
    r.body_ = body;
    r.remote_ = remote;
  }
  static void set_connection(request& r, int major, bool secure, std::string_view server_name,
                             std::string_view client_subject) {
    r.version_major_ = major;
    r.secure_ = secure;
    r.server_name_ = server_name;
    r.client_subject_ = client_subject;
  }
  static void reset(response& r, bool head_only, bool close, std::string_view date,
                    body_sink* sink) {
    r.status_ = 200;
    r.headers_.clear();
    r.trailers_.clear();
    r.body_.clear();
    r.streaming_ = false;
    r.streamed_ = 0;
    r.chunked_ = false;
    r.head_only_ = head_only;
    r.close_ = close;
    r.ok_ = true;
    r.sink_ = sink;
    r.date_ = date;
  }

  static const std::string& headers(const response& r) { return r.headers_; }
  static const std::string& body(const response& r) { return r.body_; }
  static const std::string& trailers(const response& r) { return r.trailers_; }
  static bool streaming_started(const response& r) { return r.streaming_; }
  static bool head_only(const response& r) { return r.head_only_; }
  static bool close(const response& r) { return r.close_; }
  static bool chunked(const response& r) { return r.chunked_; }
  static bool ok(const response& r) { return r.ok_; }
  static std::string_view date(const response& r) { return r.date_; }
  static void set_streaming(response& r, bool chunked) {
    r.streaming_ = true;
    r.chunked_ = chunked;
  }
  static void set_failed(response& r) { r.ok_ = false; }
  static void set_close(response& r) { r.close_ = true; }
  static void set_http10(response& r, bool v) { r.http10_ = v; }
  static bool http10(const response& r) { return r.http10_; }
};

// Appends the status line and the server's own fields plus the handler's fields to `out`.
// `content_length` -1: chunked (streaming); -2: no length (close-delimited, or a status
// that has no body).
void write_head(std::string& out, const response& res, long long content_length);

}  // namespace endless::http::detail
