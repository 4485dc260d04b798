// token_logprobs: the logprob entry of a sampled token, computed from the
// logits it was drawn from while they are still in the context, so that a
// request that asks for logprobs costs no copy of a vocabulary row to
// Python. python/linalign/logprobs.py documents each field; this is its
// computation, field for field (tests/reference_logprobs.py is the numpy
// form it is held to).
#pragma once

#include "llama.h"
#include "linear_alignment_sampler.h"

#include <cstdint>
#include <string>
#include <vector>

namespace linalign {

// OpenAI's stand-in for a probability of zero: a top_logprobs filler outside
// the nucleus, or a chosen token the nucleus does not hold.
constexpr double ZERO_LOGPROB = -9999.0;
// The most alternatives an entry lists (top_logprobs).
constexpr int32_t MAX_TOP_LOGPROBS = 20;

struct token_logprob {
    double                   logprob = ZERO_LOGPROB;  // under the aligned distribution, at temperature 1
    std::vector<llama_token> top;                     // k alternatives, most likely first (then fillers)
    std::vector<double>      top_logprobs;
    llama_token              plain_top_token   = -1;  // the base stream's most likely (among a grammar's allowed)
    double                   plain_top_logprob = 0.0; // under log_softmax(l_0)
    double                   logprob_principled = 0.0; // the chosen token under log_softmax(l_p)
    double                   logprob_plain      = 0.0; // under log_softmax(l_0)
    float                    ratio        = 0.0f;     // P's step size at this token
    bool                     echo_guarded = false;
};

// What one sample was drawn from: the streams' logits (B's is P's when the
// request decodes no base stream), the step size each principled stream was
// applied at and the echo guard's drops (the chain's, to replay), and what a
// grammar allowed (nullptr: no grammar).
struct sampled_logits {
    const float *                               logits_p = nullptr;
    const float *                               logits_b = nullptr;
    std::vector<const float *>                  logits_extra;
    std::vector<float>                          ratios;
    std::vector<linear_alignment_guard>         guarded;
    const std::vector<llama_token> *            grammar_allowed = nullptr;
};

// Computes entries; its buffers are reused across tokens.
class token_logprob_calculator {
public:
    explicit token_logprob_calculator(int32_t n_vocab) : n_vocab_(n_vocab) {}

    // The entry of `token`, with its k most likely alternatives (k in
    // [0, MAX_TOP_LOGPROBS]); top_p and temperature are the request's (the
    // nucleus is the one the sampler cut).
    token_logprob compute(llama_token token, const sampled_logits & in, float top_p, float temperature, int32_t k);

private:
    void top_entries(const sampled_logits & in, int32_t k, token_logprob & out);

    const int32_t                 n_vocab_;
    std::vector<llama_token_data> cur_;      // the aligned candidates
    std::vector<float>            masked_p_; // P's logits, a grammar's rejected tokens at -inf
    std::vector<double>           logprobs_; // of the finite candidates
    std::vector<int32_t>          finite_;   // their indices in cur_
    std::vector<int32_t>          order_;    // candidate or token indices being ranked
    std::vector<uint8_t>          rejected_; // by the grammar
};

} // namespace linalign
