#include "httpfront/tls_session.h"

#include "openssl/err.h"
#include "openssl/ssl.h"

namespace tunnel::httpfront {
namespace {

ssize_t Classify(SSL* ssl, int r) {
  const int err = SSL_get_error(ssl, r);
  ERR_clear_error();
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return TlsSession::kWantRead;
    case SSL_ERROR_WANT_WRITE:
      return TlsSession::kWantWrite;
    case SSL_ERROR_ZERO_RETURN:
      return 0;  // close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a FIN
    default:
      return TlsSession::kError;
  }
}

}  // namespace

TlsSession::TlsSession(int fd, SSL_CTX* ctx) : ssl_(SSL_new(ctx)) {
  if (ssl_ != nullptr) {
    SSL_set_fd(ssl_, fd);
    SSL_set_accept_state(ssl_);
  }
}

TlsSession::~TlsSession() { SSL_free(ssl_); }

ssize_t TlsSession::Handshake() {
  if (ssl_ == nullptr) return kError;
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) return 1;
  const ssize_t c = Classify(ssl_, r);
  return c == 0 ? kError : c;
}

ssize_t TlsSession::Read(char* buf, size_t n) {
  size_t got = 0;
  ERR_clear_error();
  const int r = SSL_read_ex(ssl_, buf, n, &got);
  if (r == 1) return static_cast<ssize_t>(got);
  return Classify(ssl_, r);
}

ssize_t TlsSession::Write(const char* data, size_t n) {
  size_t written = 0;
  ERR_clear_error();
  const int r = SSL_write_ex(ssl_, data, n, &written);
  if (r == 1) return static_cast<ssize_t>(written);
  const ssize_t c = Classify(ssl_, r);
  return c == 0 ? kError : c;
}

bool TlsSession::HasPending() const { return SSL_has_pending(ssl_) == 1; }

bool TlsSession::PeerConnected() {
  char c;
  size_t got = 0;
  ERR_clear_error();
  const int r = SSL_peek_ex(ssl_, &c, 1, &got);
  if (r == 1) return true;
  const ssize_t k = Classify(ssl_, r);
  return k == kWantRead || k == kWantWrite;
}

void TlsSession::CloseNotify() {
  if ((SSL_get_shutdown(ssl_) & SSL_SENT_SHUTDOWN) != 0 ||
      !SSL_is_init_finished(ssl_)) {
    return;
  }
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

}  // namespace tunnel::httpfront
