// Eight floats at a time, as GCC and Clang vector types: the scans over a
// vocabulary (a max, an argmax, greedy's best combined logit) in vector
// instructions on every target. GCC 12 leaves the same loops written over
// arrays scalar (a select it will not if-convert without fast math), and
// splits these types into what each target has: one AVX2 register, two SSE
// or NEON ones. (Sixteen, one AVX-512 register, came out scalar in the AVX2
// build.) Compares are IEEE's: NaN loses every one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#    define LINALIGN_HAVE_LANES 1
// the helpers below are inlined, never called across units: no ABI to keep
#    if !defined(__clang__)
#        pragma GCC diagnostic ignored "-Wpsabi"
#    endif

constexpr size_t LINALIGN_LANES = 8;
typedef float lanes_f __attribute__((vector_size(LINALIGN_LANES * sizeof(float))));
typedef int32_t lanes_i __attribute__((vector_size(LINALIGN_LANES * sizeof(int32_t))));

static inline lanes_f lanes_load(const float * p) {
    lanes_f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

static inline lanes_f lanes_splat(float x) {
    lanes_f v;
    for (size_t j = 0; j < LINALIGN_LANES; ++j) {
        v[j] = x;
    }
    return v;
}

static inline lanes_i lanes_splat(int32_t x) {
    lanes_i v;
    for (size_t j = 0; j < LINALIGN_LANES; ++j) {
        v[j] = x;
    }
    return v;
}

static inline lanes_i lanes_iota(int32_t first) {
    lanes_i v;
    for (size_t j = 0; j < LINALIGN_LANES; ++j) {
        v[j] = first + (int32_t) j;
    }
    return v;
}

// a where mask (all ones), else b
static inline lanes_f lanes_select(const lanes_i & mask, const lanes_f & a, const lanes_f & b) {
    return (lanes_f) (((lanes_i) a & mask) | ((lanes_i) b & ~mask));
}

static inline lanes_i lanes_select(const lanes_i & mask, const lanes_i & a, const lanes_i & b) {
    return (a & mask) | (b & ~mask);
}

// The lanes' best value and the lowest id that has it, folded into
// (*best, *best_id): lane j holds its best value and the first id that
// reached it (ids < 0 for none).
static inline void lanes_fold_best(const lanes_f & lane, const lanes_i & lane_id, float * best, int32_t * best_id) {
    for (size_t j = 0; j < LINALIGN_LANES; ++j) {
        if (lane_id[j] < 0) {
            continue;
        }
        if (*best_id < 0 || lane[j] > *best || (lane[j] == *best && lane_id[j] < *best_id)) {
            *best = lane[j];
            *best_id = lane_id[j];
        }
    }
}
#endif
