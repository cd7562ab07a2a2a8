// The CVM image: the program an emulated backend launches as the CVM. It
// links libcpc's guest side (runtime, platform models) and the built-in
// maintenance modules; its own hash is part of the launch measurement.
#include <cstdio>
#include <cstring>

#include "backends/builtin.h"
#include "emulator/cvm.h"
#include "modules/builtin.h"
#if defined(CPC_NULL_AEAD_IMAGE)
#include "operators/null_aead.h"
#endif

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--cpc-cvm") != 0) {
    std::fprintf(stderr,
                 "cpc-cvm: a CVM image; it is started by a libcpc VMM "
                 "(e.g. `cpc`), not by hand\n");
    return 2;
  }
#if defined(CPC_NULL_AEAD_IMAGE)
  // `cpc-cvm-nullaead`, the bench-only baseline image: every seal and open
  // in this CVM is a plain copy (see operators/aead.h). Before any thread.
  cpc::RegisterBenchAeadEngine(&cpc::NullAeadEngine());
#endif
  return cpc::emu::RunCvm(cpc::MakeEmulatedPlatform,
                          cpc::InstallBuiltinModules);
}
