// linear-alignment: a llama.cpp sampler that steers stream P's candidates
// with stream B's logits (ALGORITHM.md steps 1-3).
//
// It is an ordinary llama_sampler, so it sits in a llama_sampler_chain and the
// stock samplers (penalties, top-k, min-p, temperature, dist, greedy) compose
// after it. Stream B's logits are not part of llama_token_data_array, so the
// owner hands them in before each apply with
// llama_sampler_linear_alignment_set_base().
#pragma once

#include "llama.h"

#include <cstddef>
#include <cstdint>

struct llama_sampler_linear_alignment_params {
    float ratio;       // step size r: l = l_p + r * (l_p - l_0)
    float top_p;       // plausibility nucleus of stream P, in (0, 1]
    float temperature; // temperature of the nucleus mask (<= 0 means 1)
};

// Throws std::invalid_argument on non-finite or out-of-range parameters.
llama_sampler * llama_sampler_init_linear_alignment(
        const llama_sampler_linear_alignment_params & params, int32_t n_vocab);

// Points the sampler at stream B's logits for the next apply; the array must
// hold n_vocab floats and stay alive until then. nullptr means "no base
// stream": apply then only masks (the same as ratio = 0).
void llama_sampler_linear_alignment_set_base(llama_sampler * smpl, const float * logits_base);

bool llama_sampler_is_linear_alignment(const llama_sampler * smpl);

// Several principles composed (ALGORITHM.md, "Composing principles"): stream
// P (the candidate array, ratio params.ratio) and n_extra more principled
// streams with their own ratios, over one base stream:
//   l = l_0 + sum_i (1 + r_i) (l_i - l_0)
// inside the union of the principled streams' top-p nuclei. With n_extra = 0
// it is llama_sampler_init_linear_alignment (the same sampler, bit for bit).
llama_sampler * llama_sampler_init_linear_alignment_composed(
        const llama_sampler_linear_alignment_params & params, const float * extra_ratios, size_t n_extra,
        int32_t n_vocab);

// The logits of the extra principled streams for the next apply, in the
// order of their ratios (n_extra arrays of n_vocab floats, alive until then).
// Throws std::invalid_argument when n differs from the sampler's n_extra.
void llama_sampler_linear_alignment_set_principled(llama_sampler * smpl, const float * const * logits, size_t n);

// The most principled streams one sampler composes.
constexpr size_t LINEAR_ALIGNMENT_MAX_PRINCIPLES = 8;

// out[i] = {i, logits[i], 0} for i < n: the full candidate array of a logits
// vector, in id order.
void linear_alignment_fill_candidates(const float * logits, size_t n, llama_token_data * out);

// The sampler's apply on stream P's full candidate array in id order
// ({i, logits_p[i], 0} for every token: what a chain with nothing before the
// sampler hands it), without building that array: writes the same result to
// out (room for n_vocab entries) and returns its size. Saves a pass that
// writes the whole vocabulary before every token.
size_t llama_sampler_linear_alignment_apply_dense(llama_sampler * smpl, const float * logits_p, llama_token_data * out);

// Checks the parameters the same way the factory does, for callers that
// build several samplers and want to fail before allocating any.
void linear_alignment_validate(const llama_sampler_linear_alignment_params & params);
