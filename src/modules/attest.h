// The "attest" maintenance module: procedure "report" returns the platform's
// signed attestation report (native layout) with the 64-byte argument as its
// report data. A verifier (host, tenant or peer CVM) checks the signature
// chain and the measurement; used by the migration key exchange.
#ifndef CPC_SRC_MODULES_ATTEST_H_
#define CPC_SRC_MODULES_ATTEST_H_

#include <memory>

#include <cpc/module.h>

CPC_NAMESPACE_BEGIN
std::unique_ptr<Module> MakeAttestModule();
CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_ATTEST_H_
