// The server side of one visitor's TLS connection on a non-blocking socket:
// OpenSSL's calls, never waiting. The caller (the connection layer, on its
// loop thread or one of its fibers) waits for readiness when a call says it
// wants to read or to write.
//
// Threads: one loop thread (and its fibers, which never run at once).
#ifndef TUNNEL_HTTPFRONT_TLS_SESSION_H_
#define TUNNEL_HTTPFRONT_TLS_SESSION_H_

#include <sys/types.h>

#include <cstddef>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace tunnel::httpfront {

class TlsSession {
 public:
  // Results besides byte counts.
  static constexpr ssize_t kError = -1;
  static constexpr ssize_t kWantRead = -2;
  static constexpr ssize_t kWantWrite = -3;

  // `fd` must be non-blocking and outlive the session.
  TlsSession(int fd, SSL_CTX* ctx);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // One step of the handshake: 1 when done, kWantRead, kWantWrite or kError.
  ssize_t Handshake();
  // > 0 bytes, 0 at the visitor's close_notify or FIN, kWant*, kError.
  ssize_t Read(char* buf, size_t n);
  // > 0 bytes written (all of them, or a record's worth), kWant*, kError.
  ssize_t Write(const char* data, size_t n);
  // Decrypted bytes wait inside OpenSSL (epoll cannot see them).
  bool HasPending() const;
  // Never waits: false once the visitor sent close_notify or FIN, or the
  // connection failed. Bytes it looks at stay readable.
  bool PeerConnected();
  // close_notify once, if the handshake finished (does not wait for room
  // or for the visitor's answer).
  void CloseNotify();

 private:
  SSL* const ssl_;
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_TLS_SESSION_H_
