// What the vectorised loops of linear_alignment_weights.cpp and
// linear_alignment_divergence.cpp share. Include it before <cmath>.
//
// Without finite-math-only glibc no longer declares its vector expf and
// logf, so they are declared here, as math-vector.h does under fast math.
// Where the toolchain can (GCC on x86-64 with glibc: ifuncs), each loop
// marked LINALIGN_VECTOR_CLONES is also built for AVX2 and AVX-512 and the
// best one is picked when the library loads.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
extern "C" float expf(float) noexcept __attribute__((__simd__("notinbranch")));
extern "C" float logf(float) noexcept __attribute__((__simd__("notinbranch")));
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__)
#    define LINALIGN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#    define LINALIGN_VECTOR_CLONES
#endif

// A helper of a LINALIGN_VECTOR_CLONES function that must be built into each
// clone: one left out of line is built once, for the baseline target.
#if defined(__GNUC__)
#    define LINALIGN_ALWAYS_INLINE __attribute__((always_inline))
#else
#    define LINALIGN_ALWAYS_INLINE
#endif

// The argument of an exp whose result counts as ~0 below e^-87: -inf (a
// masked token) and NaN land there too. Clamp in a loop of its own, before
// the one that calls expf: in one loop GCC moves the clamp after the call
// (z < c ? exp(c) : exp(z)), so the vector expf sees every z and takes its
// slow scalar path (errno, underflow) for each lane far below -87: most of
// a peaked distribution's vocabulary, and every token a grammar masks.
static inline float linear_alignment_exp_arg(float z) {
    return z > -87.0f ? z : -87.0f;
}
