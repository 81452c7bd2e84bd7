#include "agent/response_parser.h"

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <limits>

namespace tunnel::agent {

ResponseParser::ResponseParser(std::string* header_block, std::string* body,
                               uint32_t max_head_bytes, bool head_request)
    : block_(header_block), body_(body) {
  block_->clear();
  block_->reserve(512);  // one allocation for a usual head's fields
  header_limit(max_head_bytes);
  // Bodies of any size (they stream on in flat memory). Not boost::none:
  // Boost 1.74 compares a Content-Length with the empty limit as if it
  // were below every value.
  body_limit(std::numeric_limits<std::uint64_t>::max());
  eager(true);         // body bytes as soon as they arrive
  skip(head_request);  // a HEAD response has no body
}

bool ResponseParser::Feed(absl::string_view bytes, size_t* used,
                          std::string* error) {
  error_code ec;
  *used = put(boost::asio::const_buffer(bytes.data(), bytes.size()), ec);
  if (ec == boost::beast::http::error::need_more) ec = {};
  if (ec) {
    *error = ec.message();
    return false;
  }
  return true;
}

bool ResponseParser::FeedEnd(std::string* error) {
  error_code ec;
  put_eof(ec);
  if (ec) {
    *error = ec.message();
    return false;
  }
  return true;
}

void ResponseParser::on_response_impl(int code, string_view, int version,
                                      error_code& ec) {
  if (version < 10 || version > 11) {
    ec = boost::beast::http::error::bad_version;
    return;
  }
  status_ = code;
}

void ResponseParser::on_field_impl(boost::beast::http::field, string_view name,
                                   string_view value, error_code&) {
  common::AppendField(block_, absl::string_view(name.data(), name.size()),
                      absl::string_view(value.data(), value.size()));
}

std::size_t ResponseParser::on_body_impl(string_view body, error_code&) {
  body_->append(body.data(), body.size());
  return body.size();
}

std::size_t ResponseParser::on_chunk_body_impl(std::uint64_t, string_view body,
                                               error_code&) {
  body_->append(body.data(), body.size());
  return body.size();
}

}  // namespace tunnel::agent
