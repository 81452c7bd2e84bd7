// QR codes of the agent's public URL for the terminal, through libqrencode.
#ifndef TUNNEL_AGENT_QR_H_
#define TUNNEL_AGENT_QR_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tunnel::agent {

// The module matrix of `text` (8-bit mode, error correction level M, smallest
// version that fits): rows of booleans, true = dark. No quiet zone.
absl::StatusOr<std::vector<std::vector<bool>>> QrModules(
    const std::string& text);

// Renders `modules` with a 4-module quiet zone for a terminal with light text
// on a dark background: a light module is drawn (foreground colour), a dark
// one left blank. Two rows per line with the Unicode half blocks
// U+2580 (upper), U+2584 (lower), U+2588 (full) and spaces. Each line ends
// with '\n'.
std::string RenderQrHalfBlocks(const std::vector<std::vector<bool>>& modules);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_QR_H_
