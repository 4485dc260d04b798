// sampling: the parameters of one aligned generation and the llama.cpp
// sampler chain they build, with the linear-alignment sampler first.
#pragma once

#include "llama.h"
#include "linear_alignment_sampler.h"
#include "llama_handles.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace linalign {

struct sampling_params {
    float    ratio             = 2.0f;
    float    top_p             = 0.8f;  // the linear-alignment nucleus
    float    temperature       = 0.8f;  // 0 = greedy
    int32_t  top_k             = 40;    // <= 0 disables
    float    min_p             = 0.0f;
    float    repeat_penalty    = 1.0f;
    float    frequency_penalty = 0.0f;
    float    presence_penalty  = 0.0f;
    int32_t  penalty_last_n    = 64;
    uint32_t seed              = LLAMA_DEFAULT_SEED;
    // ratios of the principled streams after P, when several principles are
    // composed (engine stream 2, 3, ...); empty for one principle
    std::vector<float> extra_ratios;
    // ratio "auto" (linear_alignment_steering.h): P's, and per extra stream
    // (empty, or one per extra ratio); a stream's ratio is then not used
    bool                 auto_ratio = false;
    std::vector<uint8_t> extra_auto_ratio;
    // the echo guard: its n-gram length (0: off, else >= 2), and each
    // principled stream's principle as tokens, P first (fewer: none)
    int32_t                               echo_n = 0;
    std::vector<std::vector<llama_token>> principle_tokens;
    std::string grammar;                // GBNF, empty for none
    std::string grammar_root   = "root";
    // A lazy grammar (tool_choice "auto"): it constrains nothing until the
    // output matches one of these regular expressions (llama.cpp's
    // llama_sampler_init_grammar_lazy_patterns: searched anywhere, or matched
    // whole when written ^...$; the grammar is fed the output from the first
    // non-empty capture group, or from the match), then constrains the rest.
    // Empty: the grammar constrains from the first token.
    std::vector<std::string> grammar_triggers;
    // Whether the alignment steers the tokens the grammar constrains. false:
    // while the grammar constrains (always for an eager grammar; from its
    // trigger on for a lazy one) the step decodes P alone inside its nucleus,
    // as with ratio 0 (a tool call's arguments, linalign.tool_calls).
    bool align_grammar = true;
    // The logprob entry of each sampled token (token_logprobs.h) with this
    // many alternatives, in [0, MAX_TOP_LOGPROBS]; -1: none.
    int32_t n_logprobs = -1;

    void validate() const; // throws std::invalid_argument
};

// Owns a llama_sampler_chain: [grammar] -> linear-alignment -> penalties ->
// top-k -> min-p -> temperature -> dist (or greedy when temperature == 0).
//
// The grammar, when given, runs before linear-alignment so that the
// plausibility nucleus is taken among the tokens the grammar allows; after
// it, a nucleus of grammar-invalid tokens could leave nothing to sample.
// Without a grammar, sample() runs linear-alignment through its dense entry
// point (same result, without writing a candidate for every token first) and
// then the rest of the chain.
class sampler_chain {
public:
    sampler_chain(const sampling_params & params, const llama_vocab * vocab);
    sampler_chain(const sampler_chain &) = delete;
    sampler_chain & operator=(const sampler_chain &) = delete;

    // Runs the chain over stream P's logits, steered by stream B's (and by
    // the extra principled streams' when several principles are composed:
    // one array per extra ratio), and accepts the chosen token into the
    // stateful samplers.
    llama_token sample(const float * logits_p, const float * logits_b, const float * const * logits_extra = nullptr,
                       size_t n_extra = 0);

    size_t n_extra() const { return n_extra_; }

    // Threads greedy decoding's passes over the vocabulary may take, on the
    // calling thread's OpenMP team (llama_sampler_linear_alignment_set_threads):
    // the engine's, when one slot samples after a decode. Same tokens with any.
    void set_threads(int32_t n_threads) { llama_sampler_linear_alignment_set_threads(la_, n_threads); }

    // The last sample's step size per principled stream (P first) and the
    // (stream, token) pairs whose boost the echo guard dropped.
    std::vector<float> applied_ratios() const;
    std::vector<linear_alignment_guard> guarded() const;

    // What the last sample's grammar allowed (token ids, ascending; nullptr
    // without a grammar): what logprobs need to describe the distribution
    // actually sampled, since the grammar masks P's candidates first.
    const std::vector<llama_token> * grammar_allowed() const { return has_grammar_ ? &allowed_ : nullptr; }

    // The plain stream's most likely token at the last sample (among what the
    // grammar allowed), or -1 when there was no base stream: the token plain
    // decoding would have chosen greedily, to count what alignment changed.
    llama_token plain_top() const { return plain_top_; }

private:
    sampler_ptr     chain_;
    llama_sampler * la_     = nullptr; // owned by chain_
    bool            la_first_ = false; // nothing before it: sample() hands it the logits directly
    bool            best_only_ = false; // greedy, no penalties, one principle at most: only the best candidate matters
    int32_t         n_vocab_ = 0;
    size_t          n_extra_ = 0;
    bool            has_grammar_ = false;
    bool            align_grammar_ = true;
    std::vector<llama_token> allowed_;  // reused across samples
    llama_token     plain_top_ = -1;
    // Candidate storage, left uninitialised: the dense path writes only the
    // nucleus, so the rest of it never becomes resident (576 KiB at 49k
    // tokens, 1.7 MiB at 152k).
    std::unique_ptr<llama_token_data[]> cur_;
};

} // namespace linalign
