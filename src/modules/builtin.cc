#include "modules/builtin.h"

#include "modules/attest.h"
#include "modules/audit.h"
#include "modules/migrate.h"
#include "modules/snapshot.h"

CPC_NAMESPACE_BEGIN

Status InstallBuiltinModules(ModuleRegistry& registry) {
  CPC_RETURN_IF_ERROR(registry.Register(MakeAttestModule()));
  CPC_RETURN_IF_ERROR(registry.Register(MakeAuditModule()));
  CPC_RETURN_IF_ERROR(registry.Register(MakeSnapshotModule()));
  CPC_RETURN_IF_ERROR(registry.Register(MakeMigrateModule()));
  return Status::Ok();
}

CPC_NAMESPACE_END
