// Eight floats at a time, as GCC and Clang vector types: the scans over a
// vocabulary (a max, an argmax, greedy's best combined logit, the
// nucleus's masses and candidates) in vector instructions on every target.
// GCC 12 leaves the same loops written over arrays scalar (a select it will
// not if-convert without fast math), and splits these types into what each
// target has: one AVX2 register, two SSE or NEON ones. (Sixteen, one
// AVX-512 register, came out scalar in the AVX2 build.) Compares are
// IEEE's: NaN loses every one.
#pragma once

#include <cmath>
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

// a where mask (all ones), else b
static inline lanes_f lanes_select(const lanes_i & mask, const lanes_f & a, const lanes_f & b) {
    return (lanes_f) (((lanes_i) a & mask) | ((lanes_i) b & ~mask));
}

// Whether any lane of a compare's mask is set.
static inline bool lanes_any(const lanes_i & mask) {
    uint64_t word[4];
    static_assert(sizeof word == sizeof mask, "the mask as four words");
    std::memcpy(word, &mask, sizeof word);
    return (word[0] | word[1] | word[2] | word[3]) != 0;
}

// Four running vectors where a scan would keep one: a max or a sum carried
// in one vector is a chain of dependent instructions, each waiting 3-4
// cycles for the last, and a pass over a vocabulary's row then runs at the
// chain's pace; four independent chains keep the vector units busy.
constexpr size_t LINALIGN_CHAINS = 4;
constexpr size_t LINALIGN_ROUND = LINALIGN_CHAINS * LINALIGN_LANES; // floats per round of the chains

// The largest value(i) over i < n (-inf if none; NaN and -inf never win):
// lanes(i) gives the 8 values from i, value(i) one of them, for the tail.
template <typename LanesAt, typename ValueAt>
static inline float lanes_max(size_t n, LanesAt lanes_at, ValueAt value_at) {
    lanes_f chain[LINALIGN_CHAINS];
    for (lanes_f & c : chain) {
        c = lanes_splat(-INFINITY);
    }
    size_t i = 0;
    for (; i + LINALIGN_ROUND <= n; i += LINALIGN_ROUND) {
        for (size_t c = 0; c < LINALIGN_CHAINS; ++c) {
            const lanes_f x = lanes_at(i + c * LINALIGN_LANES);
            // one maxps, whose semantics these are (NaN compares false); the
            // bitwise lanes_select of the same compare compiles to a compare and a blend
            chain[c] = x > chain[c] ? x : chain[c];
        }
    }
    for (size_t c = 1; c < LINALIGN_CHAINS; ++c) {
        chain[0] = chain[c] > chain[0] ? chain[c] : chain[0];
    }
    float best = -INFINITY;
    for (size_t j = 0; j < LINALIGN_LANES; ++j) {
        best = chain[0][j] > best ? chain[0][j] : best;
    }
    for (; i < n; ++i) {
        const float x = value_at(i);
        best = x > best ? x : best;
    }
    return best;
}

// Whether any of the round of 32 values from i passes a test: hit_at(j)
// gives the test's mask of the 8 values from j. The round's four masks are
// tested at once: moving a mask out of the vector registers costs more
// than the compares.
template <typename HitAt>
static inline bool lanes_round_any(size_t i, HitAt hit_at) {
    lanes_i hit = hit_at(i);
    for (size_t c = 1; c < LINALIGN_CHAINS; ++c) {
        hit |= hit_at(i + c * LINALIGN_LANES);
    }
    return lanes_any(hit);
}

// The first i < n whose value(i) == x, or -1. With x the max of the same
// values (lanes_max), an argmax in two passes that each run at the vector
// units' pace: the max, then the search, which stops at the first round
// that holds it.
template <typename LanesAt, typename ValueAt>
static inline int32_t lanes_find(size_t n, LanesAt lanes_at, ValueAt value_at, float x) {
    const lanes_f target = lanes_splat(x);
    size_t i = 0;
    for (; i + LINALIGN_ROUND <= n; i += LINALIGN_ROUND) {
        if (lanes_round_any(i, [&](size_t j) { return lanes_at(j) == target; })) {
            break; // it is in this round
        }
    }
    for (; i < n; ++i) {
        if (value_at(i) == x) {
            return (int32_t) i;
        }
    }
    return -1;
}

// The first i < n of the largest value(i), or -1 when none beats -inf (NaN
// never wins), and that value in *best: the max of each segment of
// LINALIGN_SEGMENT values (lanes_max), then the search (lanes_find) in the
// first segment that holds the largest alone. Searching from the start
// read half the values again, on average.
constexpr size_t LINALIGN_SEGMENT = 128 * LINALIGN_ROUND; // 4096 floats: a multiple of a round

template <typename LanesAt, typename ValueAt>
static inline int32_t lanes_argmax(size_t n, LanesAt lanes_at, ValueAt value_at, float * best) {
    *best = -INFINITY;
    size_t where = 0;
    for (size_t s = 0; s < n; s += LINALIGN_SEGMENT) {
        const size_t m = n - s < LINALIGN_SEGMENT ? n - s : LINALIGN_SEGMENT;
        const float x = lanes_max(m, [&](size_t i) { return lanes_at(s + i); }, [&](size_t i) { return value_at(s + i); });
        if (x > *best) { // the first segment of the largest
            *best = x;
            where = s;
        }
    }
    if (!(*best > -INFINITY)) {
        return -1;
    }
    const size_t m = n - where < LINALIGN_SEGMENT ? n - where : LINALIGN_SEGMENT;
    const float x = *best;
    const int32_t i = lanes_find(m, [&](size_t j) { return lanes_at(where + j); },
                                 [&](size_t j) { return value_at(where + j); }, x);
    return i < 0 ? -1 : (int32_t) (where + i);
}

// Sum over i < n of x[i] where x[i] > above, in double per value (four
// chains of four doubles).
typedef float lanes4_f __attribute__((vector_size(4 * sizeof(float))));
typedef int32_t lanes4_i __attribute__((vector_size(4 * sizeof(int32_t))));
typedef double lanes4_d __attribute__((vector_size(4 * sizeof(double))));

static inline double lanes_sum_above(const float * x, size_t n, float above) {
    lanes4_f above_v;
    for (size_t j = 0; j < 4; ++j) {
        above_v[j] = above;
    }
    lanes4_d chain[LINALIGN_CHAINS] = {};
    size_t i = 0;
    for (; i + 4 * LINALIGN_CHAINS <= n; i += 4 * LINALIGN_CHAINS) {
        for (size_t c = 0; c < LINALIGN_CHAINS; ++c) {
            lanes4_f v;
            std::memcpy(&v, x + i + 4 * c, sizeof v);
            if (above > -INFINITY) { // (a sum of all is the same without the mask: the compiler drops it)
                v = (lanes4_f) ((lanes4_i) v & (v > above_v)); // 0 where not above
            }
            chain[c] += __builtin_convertvector(v, lanes4_d);
        }
    }
    const lanes4_d s = (chain[0] + chain[1]) + (chain[2] + chain[3]);
    double total = (s[0] + s[1]) + (s[2] + s[3]);
    for (; i < n; ++i) {
        total += x[i] > above ? (double) x[i] : 0.0;
    }
    return total;
}

#endif
