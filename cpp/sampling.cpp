// sampling: validating parameters and building the sampler chain.
#include "sampling.h"
#include "linear_alignment_weights.h"

#include "token_logprobs.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace linalign {

static void require(bool ok, const std::string & message) {
    if (!ok) {
        throw std::invalid_argument(message);
    }
}

// The ranges of linalign.options.RANGES (SamplingOptions), the one place
// they are defined: what reaches here has been checked there, so these are
// invariants, with the same bounds (tests/test_option_ranges.py).
void sampling_params::validate() const {
    linear_alignment_validate({ratio, top_p, temperature});  // ratio finite, top_p in (0, 1], temperature >= 0
    require(top_k >= -1, "top_k must be >= -1");
    require(std::isfinite(min_p) && min_p >= 0.0f && min_p <= 1.0f, "min_p must be in [0, 1]");
    require(std::isfinite(repeat_penalty) && repeat_penalty > 0.0f, "repeat_penalty must be a finite number > 0");
    require(std::isfinite(frequency_penalty) && std::fabs(frequency_penalty) <= 2.0f,
            "frequency_penalty must be in [-2, 2]");
    require(std::isfinite(presence_penalty) && std::fabs(presence_penalty) <= 2.0f,
            "presence_penalty must be in [-2, 2]");
    require(penalty_last_n >= -1, "penalty_last_n must be >= -1");
    require(extra_ratios.size() + 1 <= LINEAR_ALIGNMENT_MAX_PRINCIPLES,
            "at most " + std::to_string(LINEAR_ALIGNMENT_MAX_PRINCIPLES) + " principles, got " +
                std::to_string(extra_ratios.size() + 1));
    for (size_t k = 0; k < extra_ratios.size(); ++k) {
        require(std::isfinite(extra_ratios[k]), "ratio of principle " + std::to_string(k + 2) + " must be finite");
    }
    require(extra_auto_ratio.empty() || extra_auto_ratio.size() == extra_ratios.size(),
            "extra_auto_ratio must be empty or hold one flag per extra ratio");
    require(echo_n == 0 || echo_n >= 2, "echo_n must be 0 (no echo guard) or >= 2");
    require(principle_tokens.size() <= extra_ratios.size() + 1,
            "principle_tokens holds more principles than there are principled streams");
    require(n_logprobs >= -1 && n_logprobs <= MAX_TOP_LOGPROBS,
            "n_logprobs must be -1 (none) or in [0, " + std::to_string(MAX_TOP_LOGPROBS) + "]");
}

sampler_chain::sampler_chain(const sampling_params & params, const llama_vocab * vocab) {
    params.validate();
    n_vocab_ = llama_vocab_n_tokens(vocab);

    llama_sampler_chain_params cparams = llama_sampler_chain_default_params();
    cparams.no_perf = true;
    chain_.reset(llama_sampler_chain_init(cparams));
    {
        if (!params.grammar.empty()) {
            llama_sampler * grammar = nullptr;
            if (params.grammar_triggers.empty()) {
                grammar = llama_sampler_init_grammar(vocab, params.grammar.c_str(), params.grammar_root.c_str());
            } else {
                std::vector<const char *> patterns;
                for (const std::string & p : params.grammar_triggers) {
                    patterns.push_back(p.c_str());
                }
                grammar = llama_sampler_init_grammar_lazy_patterns(vocab, params.grammar.c_str(),
                                                                   params.grammar_root.c_str(), patterns.data(),
                                                                   patterns.size(), nullptr, 0);
            }
            if (grammar == nullptr) {
                throw std::invalid_argument("invalid GBNF grammar (llama.cpp could not parse it; see its log)");
            }
            llama_sampler_chain_add(chain_.get(), grammar);
            has_grammar_ = true;
            align_grammar_ = params.align_grammar;
        }
        static const std::vector<llama_token> none;
        const auto principle = [&](size_t k) -> const std::vector<llama_token> & {
            return k < params.principle_tokens.size() ? params.principle_tokens[k] : none;
        };
        for (size_t k = 0; k < params.principle_tokens.size(); ++k) {
            for (llama_token t : params.principle_tokens[k]) {
                require(t >= 0 && t < n_vocab_, "principle_tokens holds a token id outside the vocabulary");
            }
        }
        llama_sampler_linear_alignment_params la{params.ratio, params.top_p, params.temperature};
        la.auto_ratio  = params.auto_ratio;
        la.echo_n      = params.echo_n;
        la.principle   = principle(0).data();
        la.n_principle = principle(0).size();
        std::vector<llama_sampler_linear_alignment_extra> extra;
        for (size_t k = 0; k < params.extra_ratios.size(); ++k) {
            const bool is_auto = k < params.extra_auto_ratio.size() && params.extra_auto_ratio[k];
            extra.push_back({params.extra_ratios[k], is_auto, principle(k + 1).data(), principle(k + 1).size()});
        }
        la_ = llama_sampler_init_linear_alignment_composed(la, extra.data(), extra.size(), n_vocab_);
        n_extra_ = params.extra_ratios.size();
        llama_sampler_chain_add(chain_.get(), la_);
        la_first_ = llama_sampler_chain_n(chain_.get()) == 1;
        llama_sampler_chain_add(chain_.get(), llama_sampler_init_penalties(n_vocab_, params.penalty_last_n, params.repeat_penalty,
                                                                     params.frequency_penalty, params.presence_penalty));
        const bool no_penalties = params.penalty_last_n == 0 ||
            (params.repeat_penalty == 1.0f && params.frequency_penalty == 0.0f && params.presence_penalty == 0.0f);
        best_only_ = la_first_ && n_extra_ == 0 && no_penalties && params.temperature <= 0.0f;
        if (params.temperature <= 0.0f) {
            llama_sampler_chain_add(chain_.get(), llama_sampler_init_greedy());
        } else {
            if (params.top_k > 0) {
                llama_sampler_chain_add(chain_.get(), llama_sampler_init_top_k(params.top_k));
            }
            if (params.min_p > 0.0f) {
                llama_sampler_chain_add(chain_.get(), llama_sampler_init_min_p(params.min_p, 1));
            }
            llama_sampler_chain_add(chain_.get(), llama_sampler_init_temp(params.temperature));
            llama_sampler_chain_add(chain_.get(), llama_sampler_init_dist(params.seed));
        }
        cur_.reset(new llama_token_data[n_vocab_]);
    }
}

llama_token sampler_chain::sample(const float * logits_p, const float * logits_b, const float * const * logits_extra,
                                  size_t n_extra) {
    if (n_extra != n_extra_ || (n_extra > 0 && (logits_extra == nullptr || logits_b == nullptr))) {
        throw std::invalid_argument("this chain composes " + std::to_string(n_extra_ + 1) +
                                    " principles: it needs the base stream's and every principled stream's logits");
    }
    llama_token_data_array cur_p = {
        /* .data     = */ cur_.get(),
        /* .size     = */ (size_t) n_vocab_,
        /* .selected = */ -1,
        /* .sorted   = */ false,
    };
    llama_sampler_linear_alignment_set_base(la_, logits_b);
    llama_sampler_linear_alignment_set_principled(la_, logits_extra, n_extra);
    if (best_only_) {
        // greedy: the one best candidate, found without cutting the nucleus
        // where it does not decide which token that is; then the rest of the chain
        cur_p.size = llama_sampler_linear_alignment_apply_dense_best(la_, logits_p, cur_.get());
        for (int32_t i = 1; i < llama_sampler_chain_n(chain_.get()); ++i) {
            llama_sampler_apply(llama_sampler_chain_get(chain_.get(), i), &cur_p);
        }
    } else if (la_first_) {
        // the chain's first sampler, run on the logits themselves; then the rest
        cur_p.size = llama_sampler_linear_alignment_apply_dense(la_, logits_p, cur_.get());
        for (int32_t i = 1; i < llama_sampler_chain_n(chain_.get()); ++i) {
            llama_sampler_apply(llama_sampler_chain_get(chain_.get(), i), &cur_p);
        }
    } else {
        // the grammar first (it only sets the logits of what it rejects to
        // -inf, in id order), what it allowed noted, then the rest of the chain
        linear_alignment_fill_candidates(logits_p, cur_p.size, cur_.get());
        llama_sampler_apply(llama_sampler_chain_get(chain_.get(), 0), &cur_p);
        allowed_.clear();
        for (size_t i = 0; i < cur_p.size; ++i) {
            if (cur_p.data[i].logit != -INFINITY) {
                allowed_.push_back(cur_p.data[i].id);
            }
        }
        // A grammar that constrains masks something: every eager grammar
        // masks the end of generation until it is complete and every token
        // after, and the tokens that spell nothing always. A lazy grammar
        // still awaiting its trigger masks nothing: that is how this tells
        // the two apart (llama.cpp does not expose the trigger state).
        const bool constrained = allowed_.size() < cur_p.size;
        if (constrained && !align_grammar_) {
            // P alone inside its nucleus: the combine could lift a token the
            // grammar allows but P finds unlikely (a wrong value in a tool
            // call's arguments) above what P would write
            llama_sampler_linear_alignment_set_base(la_, nullptr);
            llama_sampler_linear_alignment_set_principled(la_, nullptr, n_extra);
        }
        for (int32_t i = 1; i < llama_sampler_chain_n(chain_.get()); ++i) {
            llama_sampler_apply(llama_sampler_chain_get(chain_.get(), i), &cur_p);
        }
    }
    plain_top_ = -1;
    if (logits_b != nullptr) {
        if (has_grammar_) {
            for (llama_token t : allowed_) {
                if (plain_top_ < 0 || logits_b[t] > logits_b[plain_top_]) {
                    plain_top_ = t;
                }
            }
        } else {
            plain_top_ = linear_alignment_argmax(logits_b, (size_t) n_vocab_);
        }
    }
    llama_sampler_linear_alignment_set_base(la_, nullptr);
    llama_sampler_linear_alignment_set_principled(la_, nullptr, n_extra);
    if (cur_p.selected < 0 || cur_p.selected >= (int64_t) cur_p.size) {
        throw std::runtime_error("sampler chain selected no token");
    }
    const llama_token token = cur_p.data[cur_p.selected].id;
    llama_sampler_accept(chain_.get(), token);
    return token;
}

std::vector<float> sampler_chain::applied_ratios() const {
    size_t n = 0;
    const float * r = llama_sampler_linear_alignment_applied_ratios(la_, &n);
    return std::vector<float>(r, r + n);
}

std::vector<linear_alignment_guard> sampler_chain::guarded() const {
    size_t n = 0;
    const linear_alignment_guard * g = llama_sampler_linear_alignment_guarded(la_, &n);
    return std::vector<linear_alignment_guard>(g, g + n);
}

} // namespace linalign
