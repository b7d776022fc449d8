// Function multiversioning for the CPU row loops: the extension is built for the
// baseline ISA, and gcc emits AVX-512 / AVX2+FMA clones of each marked function,
// picked once at load time from the running CPU. The row loops are written for
// auto-vectorisation (no calls, no branches), so the clones run 8/16 lanes wide.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UNLX_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define UNLX_CPU_CLONES
#endif
