// The request inspector's page: HTML, script and style, built into the
// binary (agent/inspect_page.cc), so the agent stays one file.
#ifndef TUNNEL_AGENT_INSPECT_PAGE_H_
#define TUNNEL_AGENT_INSPECT_PAGE_H_

namespace tunnel::agent {

extern const char kInspectPageHtml[];
extern const char kInspectPageJs[];
extern const char kInspectPageCss[];
// Scripts and styles from the agent only; nothing inline, no other site.
inline constexpr char kInspectPageCsp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_INSPECT_PAGE_H_
