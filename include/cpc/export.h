// Symbol visibility for libcpc. The library is built with hidden visibility and
// a linker version script; only what is marked CPC_EXPORT (C++) or named cpc_*
// (C ABI) is exported.
#ifndef CPC_EXPORT_H_
#define CPC_EXPORT_H_

#if defined(CPC_STATIC) || !defined(__GNUC__)
#define CPC_EXPORT
#else
#define CPC_EXPORT __attribute__((visibility("default")))
#endif

#endif  // CPC_EXPORT_H_
