// The "null" AEAD engine: BENCH BASELINE ONLY, no security whatsoever.
//
// Seal copies the plaintext to the ciphertext and writes an all-zero tag;
// Open checks that the tag is all zero (kAuthFailed otherwise: it catches
// framing bugs, not attacks) and copies the ciphertext to the plaintext.
// Both touch the same bytes as a real engine, so a pipeline running on it
// costs what the pipeline costs without AES-GCM.
//
// It is compiled only into the bench CVM image `cpc-cvm-nullaead`
// (src/CMakeLists.txt), never into libcpc, cpc_internal or `cpc-cvm`; that
// image's main() registers it with RegisterBenchAeadEngine (aead.h), which
// makes it the image's default engine. The image's own hash enters its
// launch measurement, so real CVMs refuse it as a peer.
//
// Ownership / threading: the engine is immortal and thread-safe; a keyed
// instance holds no key (it checks the key's size only) and is used by one
// thread at a time, like any KeyedAead. Nothing throws.
#ifndef CPC_SRC_OPERATORS_NULL_AEAD_H_
#define CPC_SRC_OPERATORS_NULL_AEAD_H_

#include "operators/aead.h"

CPC_NAMESPACE_BEGIN

// The immortal "null" engine.
const AeadEngine& NullAeadEngine();

CPC_NAMESPACE_END

#endif  // CPC_SRC_OPERATORS_NULL_AEAD_H_
