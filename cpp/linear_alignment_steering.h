// linear-alignment steering: how strongly each principled stream pulls at a
// given token. Two per-token decisions the sampler makes before its combine:
//
// * the strength: a fixed ratio r, or ratio "auto", set per token from how far
//   the stream's next-token distribution is from the base stream's
//   (docs/auto_ratio.md, after AdaCAD: Wang et al., NAACL 2025);
// * the echo guard: a candidate that would continue an n-gram of the
//   stream's principle that the answer has started to copy, and that the
//   stream favours, is taken out before the nucleus is cut
//   (docs/composition.md, "Per-token strength and the echo guard").
//
// Plain arrays in, plain arrays out: the sampler (linear_alignment_sampler.cpp)
// hands it every stream's logits in token-id order.
#pragma once

#include "llama.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

// ratio "auto": a stream's step size at a token is
//   r_t = min(LINEAR_ALIGNMENT_AUTO_MAX, LINEAR_ALIGNMENT_AUTO_FLOOR + LINEAR_ALIGNMENT_AUTO_SCALE * JSD_t)
// with JSD_t the Jensen-Shannon divergence, in bits, between the softmaxes
// (temperature 1, whole vocabulary) of the stream's and the base stream's
// logits: the paper's step everywhere, and more, up to the bound, where the
// principle changes the prediction. Chosen in docs/auto_ratio.md.
constexpr float LINEAR_ALIGNMENT_AUTO_FLOOR = 2.0f;
constexpr float LINEAR_ALIGNMENT_AUTO_SCALE = 10.0f;
constexpr float LINEAR_ALIGNMENT_AUTO_MAX   = 4.0f;

inline float linear_alignment_auto_step(float jsd_bits) {
    return std::min(LINEAR_ALIGNMENT_AUTO_MAX, LINEAR_ALIGNMENT_AUTO_FLOOR + LINEAR_ALIGNMENT_AUTO_SCALE * jsd_bits);
}

// A candidate whose boost from a principled stream the echo guard drops.
struct linear_alignment_guard {
    int32_t     stream; // principled stream: 0 is P, 1.. the further ones
    llama_token token;
};

struct linear_alignment_steering {
    // one entry per principled stream, P first
    const std::vector<float>                    ratios;     // fixed step sizes
    const std::vector<uint8_t>                  auto_ratio; // 1: the step size is set per token
    const int32_t                               echo_n;     // the guard's n-gram length; 0: no guard
    const std::vector<std::vector<llama_token>> principles; // each stream's principle as tokens

    std::vector<llama_token> recent; // the last echo_n - 1 tokens accepted

    // what the last apply did
    std::vector<float>                  applied; // step size per stream
    std::vector<linear_alignment_guard> guarded; // boosts dropped, on candidates that were kept

    // scratch
    std::vector<double>                 lse;      // per stream, at temperature 1 (NaN: not computed)
    double                              lse_base = 0.0;
    std::vector<linear_alignment_guard> pending;  // what to guard at this apply
    bool                                replay = false; // pending was given by the caller
    std::vector<llama_token>            continuations;  // one stream's, while planning
    std::vector<llama_token>            drops;          // what the guard takes out at this apply
    // the streams' logits in token-id order as steering reads them
    std::vector<const float *>          rows;      // P, then the extra streams (empty: none needed)
    const float *                       row_base = nullptr;
    size_t                              n_vocab  = 0;
    std::vector<std::vector<float>>     id_rows;   // P's from a candidate array, the others masked alike
    std::vector<float>                  id_base;
};

linear_alignment_steering linear_alignment_steering_init(std::vector<float> ratios, std::vector<uint8_t> auto_ratio,
                                                         int32_t echo_n,
                                                         std::vector<std::vector<llama_token>> principles);

// A generated token (llama_sampler accept) and a new generation (reset).
void linear_alignment_steering_accept(linear_alignment_steering & st, llama_token token);
void linear_alignment_steering_reset(linear_alignment_steering & st);

// The next apply guards exactly these pairs instead of those it would find
// from the accepted tokens: replays a recorded step (logprobs).
void linear_alignment_steering_replay(linear_alignment_steering & st, const linear_alignment_guard * guards, size_t n);

// Before the combine, at each apply: the step size of every stream and the
// candidates to guard (from the accepted tokens, or as replayed), with the
// normalisers the guard needs. base: the base stream's logits (nullptr: no
// base stream, so no combine: every step size is 0, nothing is guarded);
// extra: the further principled streams' (one per ratio after P's), all in
// token-id order, n_vocab each. P's come as logits_p in id order, or, when
// logits_p is nullptr, from the candidate array data[0..n): a grammar may
// have masked some of them, and every other stream is then masked alike, so
// that a divergence compares the same tokens.
void linear_alignment_steering_start(linear_alignment_steering & st, const float * base, const float * const * extra,
                                     const float * logits_p, const llama_token_data * data, size_t n, size_t n_vocab);

// After start, before the nucleus: the pending candidates the guard takes
// out, those whose stream k favours them,
//   r_k * (log p_k(t) - log p_base(t)) > 0
// (full-vocabulary log-probabilities at temperature 1). Records them in
// st.guarded and returns their ids (empty: nothing to take out). Once the
// answer copies, P's nucleus often holds the copy's next token alone:
// lowering that token would leave it the only candidate, so it goes before
// the nucleus is cut, which then falls on what P would say instead.
const std::vector<llama_token> & linear_alignment_steering_drops(linear_alignment_steering & st);

// For each j where principle[j .. j+n-2] equals the last n-1 tokens of
// recent, principle[j+n-1]: the tokens that would extend a copied n-gram.
void linear_alignment_echo_continuations(const std::vector<llama_token> & principle,
                                         const std::vector<llama_token> & recent, size_t n,
                                         std::vector<llama_token> & out);
