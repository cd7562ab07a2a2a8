// The SEV-SNP platform of the emulated machine: the EmulatedPlatform (and so
// GuestPlatform) the CVM process runs on, built from the SNP silicon model
// (SnpMachine: RMP, NPT, VMRUN checks), the AMD-SP firmware (launch digest,
// VMPCKs, signed reports, derived keys) and the VMPL0 SVSM core (vCPUs,
// Secure-CPC isolation, VMSA export/import).
//
// Privilege layout: the CPC runtime and every hvCPU run at VMPL0; the guest
// OS runs at VMPL2 (as under COCONUT-SVSM). Guest memory [0, cpc_base) is
// granted RWX to VMPL2; the CPC region above it (secrets page, GHCB, VMSAs,
// Secure-CPC memory) never is.
#ifndef CPC_SRC_BACKENDS_SEV_SEV_PLATFORM_H_
#define CPC_SRC_BACKENDS_SEV_SEV_PLATFORM_H_

#include <memory>
#include <vector>

#include "emulator/platform.h"

CPC_NAMESPACE_BEGIN

std::unique_ptr<emu::EmulatedPlatform> MakeSevPlatform();
// Facts for `cpc info`: checks the firmware model end to end (a report from
// an emulated chip verifies against the pinned emulated AMD root).
std::vector<ProbeFact> SevProbe();

CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_SEV_PLATFORM_H_
