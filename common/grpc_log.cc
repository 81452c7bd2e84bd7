#include "common/grpc_log.h"

#include <cstring>

#include "common/log.h"
#include "grpc/support/log.h"

namespace tunnel::common {
namespace {

void ToOurLog(gpr_log_func_args* args) {
  const LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR
                             ? LogLevel::kWarning
                             : LogLevel::kDebug;
  if (level < GetLogLevel()) return;
  const char* file = args->file != nullptr ? args->file : "grpc";
  if (const char* slash = std::strrchr(file, '/')) file = slash + 1;
  LogMessage(level, file, args->line).stream()
      << "grpc: " << (args->message != nullptr ? args->message : "");
}

}  // namespace

void RouteGrpcLogs() {
  // Our hook decides by our level; gRPC must hand over everything it logs.
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_DEBUG);
  gpr_set_log_function(&ToOurLog);
}

}  // namespace tunnel::common
