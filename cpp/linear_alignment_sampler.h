// linear-alignment: a llama.cpp sampler that steers stream P's candidates
// with stream B's logits (ALGORITHM.md steps 1-3).
//
// It is an ordinary llama_sampler, so it sits in a llama_sampler_chain and the
// stock samplers (penalties, top-k, min-p, temperature, dist, greedy) compose
// after it. Stream B's logits are not part of llama_token_data_array, so the
// owner hands them in before each apply with
// llama_sampler_linear_alignment_set_base().
//
// Per token it may set a stream's step size itself (ratio "auto") and drop
// the boost of a candidate that would continue an echo of the principle (the
// echo guard): linear_alignment_steering.h. The guard watches the tokens the
// sampler accepts (llama_sampler_accept), so it belongs to one generation.
#pragma once

#include "llama.h"
#include "linear_alignment_steering.h"

#include <cstddef>
#include <cstdint>

struct llama_sampler_linear_alignment_params {
    float ratio;       // step size r: l = l_p + r * (l_p - l_0)
    float top_p;       // plausibility nucleus of stream P, in (0, 1]
    float temperature; // temperature of the nucleus mask (<= 0 means 1)
    bool  auto_ratio = false; // P's step size is set per token (ratio is then not used)
    int32_t echo_n   = 0;     // the echo guard's n-gram length (>= 2); 0: no guard
    // P's principle as tokens (as it appears in the prompt, without BOS),
    // for the echo guard; copied by the factory
    const llama_token * principle   = nullptr;
    size_t              n_principle = 0;
};

// A principled stream after P, when several principles are composed.
struct llama_sampler_linear_alignment_extra {
    float               ratio;
    bool                auto_ratio  = false;
    const llama_token * principle   = nullptr;
    size_t              n_principle = 0;
};

// Throws std::invalid_argument on non-finite or out-of-range parameters.
llama_sampler * llama_sampler_init_linear_alignment(
        const llama_sampler_linear_alignment_params & params, int32_t n_vocab);

// Points the sampler at stream B's logits for the next apply; the array must
// hold n_vocab floats and stay alive until then. nullptr means "no base
// stream": apply then only masks (the same as ratio = 0).
void llama_sampler_linear_alignment_set_base(llama_sampler * smpl, const float * logits_base);

bool llama_sampler_is_linear_alignment(const llama_sampler * smpl);

// Threads greedy decoding's passes over the vocabulary may take (default 1):
// with more, each pass runs in two parts on the calling thread's OpenMP team
// (the engine's, idle between decodes, when one slot samples). The answer is
// the same to the bit with any count: the parts are fixed and summed in order.
void llama_sampler_linear_alignment_set_threads(llama_sampler * smpl, int32_t n_threads);

// Several principles composed (ALGORITHM.md, "Composing principles"): stream
// P (the candidate array, ratio params.ratio) and n_extra more principled
// streams with their own ratios (and principles), over one base stream:
//   l = l_0 + sum_i (1 + r_i) (l_i - l_0)
// inside the union of the principled streams' top-p nuclei. With n_extra = 0
// it is llama_sampler_init_linear_alignment (the same sampler, bit for bit).
llama_sampler * llama_sampler_init_linear_alignment_composed(
        const llama_sampler_linear_alignment_params & params, const llama_sampler_linear_alignment_extra * extra,
        size_t n_extra, int32_t n_vocab);

// The logits of the extra principled streams for the next apply, in the
// order of their ratios (n_extra arrays of n_vocab floats, alive until then).
// Throws std::invalid_argument when n differs from the sampler's n_extra.
void llama_sampler_linear_alignment_set_principled(llama_sampler * smpl, const float * const * logits, size_t n);

// What the last apply did: the step size each principled stream was applied
// at (P first; all 0 when there was no base stream), and the candidates whose
// boost the echo guard dropped. Valid until the next apply.
const float * llama_sampler_linear_alignment_applied_ratios(const llama_sampler * smpl, size_t * n);
const linear_alignment_guard * llama_sampler_linear_alignment_guarded(const llama_sampler * smpl, size_t * n);

// The next apply guards exactly these (stream, token) pairs instead of those
// the accepted tokens call for: replays a recorded step, for logprobs of the
// distribution a token was actually drawn from.
void llama_sampler_linear_alignment_set_guarded(llama_sampler * smpl, const linear_alignment_guard * guards, size_t n);

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

// The same when the chain after it only takes the best candidate (greedy, no
// penalties) and one principle at most: writes that one candidate to out and
// returns 1, after the same steering (step size, echo guard). P alone: its
// best token, which is always in its nucleus. With the base stream: the best
// combined token inside the nucleus, from bounds on the nucleus that usually
// settle it in a few passes; where they do not, it is apply_dense (the whole
// nucleus is written). Skips the exact cut: a sort where the distribution is
// flat.
size_t llama_sampler_linear_alignment_apply_dense_best(llama_sampler * smpl, const float * logits_p,
                                                       llama_token_data * out);

// Checks the parameters the same way the factory does, for callers that
// build several samplers and want to fail before allocating any.
void linear_alignment_validate(const llama_sampler_linear_alignment_params & params);
