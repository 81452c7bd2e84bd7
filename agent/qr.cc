#include "agent/qr.h"

#include <qrencode.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace tunnel::agent {

absl::StatusOr<std::vector<std::vector<bool>>> QrModules(
    const std::string& text) {
  QRcode* code = QRcode_encodeString8bit(text.c_str(), 0, QR_ECLEVEL_M);
  if (code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot encode a QR code of ", text.size(),
                     " bytes: ", std::strerror(errno)));
  }
  std::vector<std::vector<bool>> rows(code->width,
                                      std::vector<bool>(code->width));
  for (int y = 0; y < code->width; ++y) {
    for (int x = 0; x < code->width; ++x) {
      rows[y][x] = (code->data[y * code->width + x] & 1) != 0;
    }
  }
  QRcode_free(code);
  return rows;
}

std::string RenderQrHalfBlocks(const std::vector<std::vector<bool>>& modules) {
  constexpr int kQuiet = 4;
  const int n = static_cast<int>(modules.size());
  const int size = n + 2 * kQuiet;
  // Light (drawn) unless inside the code and dark.
  auto light = [&](int y, int x) {
    int my = y - kQuiet, mx = x - kQuiet;
    if (my < 0 || mx < 0 || my >= n || mx >= n) return true;
    return !modules[my][mx];
  };
  std::string out;
  for (int y = 0; y < size; y += 2) {
    for (int x = 0; x < size; ++x) {
      bool top = light(y, x);
      bool bottom = y + 1 < size ? light(y + 1, x) : false;
      if (top && bottom) {
        out += "\u2588";
      } else if (top) {
        out += "\u2580";
      } else if (bottom) {
        out += "\u2584";
      } else {
        out += ' ';
      }
    }
    out += '\n';
  }
  return out;
}

}  // namespace tunnel::agent
