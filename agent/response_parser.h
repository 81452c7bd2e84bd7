// An HTTP/1.x response from a local service, parsed as its bytes arrive, on
// Boost.Beast's parser (header-only, already the gateway's WebSocket
// framing): status line, fields, and the body by Content-Length, chunked
// coding or until the connection closes, HEAD and 204/304 without one.
// Fields go straight into the response's protobuf head and body bytes onto
// a string, with no copy in between.
//
// One parser per response: a 1xx head (100 Continue, 103 Early Hints) is
// complete by itself, and the caller starts a new parser for the answer.
#ifndef TUNNEL_AGENT_RESPONSE_PARSER_H_
#define TUNNEL_AGENT_RESPONSE_PARSER_H_

#include <boost/beast/http/basic_parser.hpp>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "common/header_block.h"

namespace tunnel::agent {

class ResponseParser final
    : public boost::beast::http::basic_parser</*isRequest=*/false> {
 public:
  // The head's fields are added to the header block `header_block`
  // (cleared first; common/header_block.h), body bytes appended to `body`;
  // both must outlive the parser.
  ResponseParser(std::string* header_block, std::string* body,
                 uint32_t max_head_bytes, bool head_request);

  // Feeds `bytes`: how many it used (a head is used only once complete:
  // keep the rest and feed it again with more). False on a malformed
  // response, with `error` saying what is wrong.
  bool Feed(absl::string_view bytes, size_t* used, std::string* error);
  // The service closed the connection: false unless that ends the body.
  bool FeedEnd(std::string* error);

  int status() const { return status_; }
  bool informational() const {
    return status_ >= 100 && status_ < 200 && status_ != 101;
  }

 private:
  using error_code = boost::beast::error_code;
  using string_view = boost::beast::string_view;

  void on_request_impl(boost::beast::http::verb, string_view, string_view, int,
                       error_code&) override {}
  void on_response_impl(int code, string_view reason, int version,
                        error_code& ec) override;
  void on_field_impl(boost::beast::http::field, string_view name,
                     string_view value, error_code& ec) override;
  void on_header_impl(error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>&,
                         error_code&) override {}
  std::size_t on_body_impl(string_view body, error_code& ec) override;
  void on_chunk_header_impl(std::uint64_t, string_view, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, string_view body,
                                 error_code& ec) override;
  void on_finish_impl(error_code&) override {}

  std::string* const block_;
  std::string* const body_;
  int status_ = 0;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_RESPONSE_PARSER_H_
