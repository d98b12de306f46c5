// Internal: include first in every src/data translation unit. The generator promises the same bits
// for a seed on every machine, so the compiler must not fuse a·b + c into an FMA (GCC does by default
// with -std=gnu++ when the target has FMA, e.g. -march=native or aarch64; clang within statements).
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
