#include "syncbn/norm_spec.h"

#include "syncbn/error.h"

namespace syncbn {

std::string NormSpec::str() const {
  switch (kind) {
    case NormKind::kBatchNorm: return sync.str() + (renorm ? "+renorm" : "");
    case NormKind::kGroupNorm: return "groupnorm";
    case NormKind::kNone: return "none";
  }
  return "?";
}

std::string NormSpec::signature_text() const {
  if (communicates()) return "sync";
  return batchnorm() ? sync.str() : str();
}

BnRenormLimits NormSpec::renorm_limits(std::int64_t step) const {
  if (!batchnorm() || !renorm) return {};
  const double t = step >= renorm_warmup ? 1.0 : static_cast<double>(step) / static_cast<double>(renorm_warmup);
  return {true, 1.0 + (renorm_rmax - 1.0) * t, renorm_dmax * t};
}

NormSpec parse_norm(const std::string& text) {
  NormSpec n;
  if (text == "groupnorm") {
    n.kind = NormKind::kGroupNorm;
  } else if (text == "none") {
    n.kind = NormKind::kNone;
  } else if (text == "local" || text == "sync" || text.rfind("sync:", 0) == 0) {
    n.sync = parse_sync_mode(text);  // throws for sync:0, sync:x
  } else {
    SBN_FAIL("unknown --norm '" + text + "'; expected sync, sync:K, local, groupnorm or none");
  }
  return n;
}

}  // namespace syncbn
