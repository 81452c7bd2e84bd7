#include "server/visitor_policy.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/access_code.h"
#include "common/cidr.h"
#include "common/password_hash.h"
#include "common/random.h"

namespace tunnel::server {

tunnel::v1::TunnelPolicy TunnelPolicyOf(const tunnel::v1::ConnectRequest& req) {
  tunnel::v1::TunnelPolicy p;
  if (req.has_access_code()) *p.mutable_access_code() = req.access_code();
  if (req.has_ip_rules()) *p.mutable_ip_rules() = req.ip_rules();
  *p.mutable_basic_auth() = req.basic_auth();
  return p;
}

absl::StatusOr<VisitorPolicy> ParseTunnelPolicy(
    const tunnel::v1::TunnelPolicy& policy) {
  VisitorPolicy p;
  if (policy.has_access_code()) {
    if (absl::Status s = common::CheckAccessCodeHash(policy.access_code());
        !s.ok()) {
      return s;
    }
    p.access_code = std::make_shared<const tunnel::v1::AccessCodeHash>(
        policy.access_code());
  }
  if (policy.has_ip_rules()) {
    absl::StatusOr<common::IpRules> r = common::ParseIpRules(
        {policy.ip_rules().allow().begin(), policy.ip_rules().allow().end()},
        {policy.ip_rules().deny().begin(), policy.ip_rules().deny().end()},
        "ip_rules.allow", "ip_rules.deny");
    if (!r.ok()) return r.status();
    if (!r->empty()) {
      p.ip_rules = std::make_shared<const common::IpRules>(*std::move(r));
    }
  }
  if (policy.basic_auth_size() > 0) {
    std::vector<std::string> entries;
    for (const tunnel::v1::BasicAuthUser& u : policy.basic_auth()) {
      if (u.user().find(':') != std::string::npos) {
        return absl::InvalidArgumentError(
            "basic_auth: a user name must not contain ':'");
      }
      entries.push_back(absl::StrCat(u.user(), ":", u.hash()));
    }
    absl::StatusOr<std::vector<common::BasicAuthUser>> users =
        common::ParseBasicAuthUsers(entries, "basic_auth");
    if (!users.ok()) return users.status();
    auto set = std::make_shared<BasicAuthUsers>();
    set->id = common::RandomU64();
    set->users = *std::move(users);
    p.basic_auth = std::move(set);
  }
  return p;
}

}  // namespace tunnel::server
