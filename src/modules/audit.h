// The "audit" maintenance module: hashes guest memory from inside the CVM.
// Procedure "digest": args = u64 first GPA, u64 page count (little-endian);
// output = SHA-256 over the pages (32 bytes) followed by the u64 page count.
// It runs on an hvCPU, reads pages through the platform's checked private
// access, yields between batches and charges every page to the token. Used
// as the memory-equality proof of snapshot and migration.
#ifndef CPC_SRC_MODULES_AUDIT_H_
#define CPC_SRC_MODULES_AUDIT_H_

#include <memory>

#include <cpc/module.h>

CPC_NAMESPACE_BEGIN

std::unique_ptr<Module> MakeAuditModule();

// Encodes the arguments of audit.digest.
std::vector<uint8_t> AuditArgs(Gpa first, uint64_t pages);

CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_AUDIT_H_
