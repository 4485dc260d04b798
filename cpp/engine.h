// engine: one llama_context holding the two conditioning streams of linear
// alignment (P: with the principle, B: without) as two sequences.
//
// Each sequence has a KV buffer of its own, so each stream's logits are bit
// for bit those of a separate context fed the same tokens. Both prompts are
// prefilled in one llama_decode; a long prefix the two prompts share is
// decoded once and the buffer copied to the other stream. Each step then
// decodes the new token for both sequences in one 2-token batch. What is
// already in the KV cache is reused: a follow-up call decodes only the tokens
// past each stream's common prefix with what was cached.
#pragma once

#include "llama.h"
#include "model.h"
#include "sampling.h"

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace linalign {

struct engine_params {
    int32_t n_ctx           = 4096; // per stream
    int32_t n_threads       = 0;    // 0 = llama.cpp's default
    int32_t n_threads_batch = 0;
    bool    two_call        = false; // benchmark baseline: one llama_decode per stream per step
    bool    flash_attn      = false; // llama-cpp-python's default, so logits match a plain Llama
    // When set: the context is made from these parameters (a llama_cpp.Llama's,
    // whose sequence becomes stream P), with the sizes and layout above.
    const llama_context_params * base_cparams = nullptr;
};

enum stream_id : int { STREAM_P = 0, STREAM_B = 1 };

struct prefill_stats {
    int32_t reused[2]  = {0, 0}; // tokens of each stream found in the KV cache
    int32_t decoded[2] = {0, 0}; // tokens of each stream decoded now
    int32_t shared     = 0;      // of those, decoded once for both streams (a copied prefix, or identical prompts)
};

class engine {
public:
    engine(std::shared_ptr<model> mdl, const engine_params & params);
    ~engine();
    engine(const engine &) = delete;
    engine & operator=(const engine &) = delete;

    // Starts a generation: prefills both prompts (reusing the KV cache) and
    // builds the sampler chain. Throws std::invalid_argument for empty or
    // too-long prompts, bad token ids or bad sampling parameters.
    prefill_stats start(const std::vector<llama_token> & prompt_p,
                        const std::vector<llama_token> & prompt_b,
                        const sampling_params & params);

    // Samples the next token from the current logits of both streams.
    llama_token sample();

    // The current next-token logits of a stream (n_vocab floats, valid until
    // the next decode).
    const float * logits(int stream);

    // Appends a token to both streams. Returns false when the context is
    // full (the caller finishes with "length").
    bool decode(llama_token token);

    // Teacher forcing for evaluation: prefills both prompts and returns the
    // logits of the last n_tail_p positions of P and n_tail_b of B, row-major.
    void eval_logits(const std::vector<llama_token> & prompt_p, const std::vector<llama_token> & prompt_b,
                     int32_t n_tail_p, int32_t n_tail_b, std::vector<float> & out_p, std::vector<float> & out_b);

    // The cost floor: n_steps decodes of a 2-token batch with no sampling.
    void decode_floor(llama_token token, int32_t n_steps);

    void clear();  // forgets the KV cache
    // Forgets what the engine cached without touching the KV cache: for when
    // a Llama sharing the context has written to it (shared_context.py).
    void forget();
    // A Llama sharing the context is about to decode on stream P's sequence:
    // P's cells and the last logits become its own. The engine keeps P's
    // tokens and decodes them again when it next needs them (B's cells are
    // left alone), so a generation in progress goes on.
    void evict_prompt_stream();
    void close();
    bool closed() const { return ctx_ == nullptr; }

    int32_t n_ctx() const { return params_.n_ctx; }
    int32_t n_past(int stream) const { return (int32_t) cached_.at(stream).size(); }
    bool    streams_identical() const { return identical_; }
    const prefill_stats & last_prefill() const { return last_prefill_; }
    int64_t n_decode_calls() const { return n_decode_calls_; }
    const model & get_model() const { return *model_; }
    llama_context * context() const { require_open(); return ctx_; }

private:
    void require_open() const;
    void check_prompt(const std::vector<llama_token> & prompt, const char * name) const;
    prefill_stats prefill(const std::vector<llama_token> & prompt_p, const std::vector<llama_token> & prompt_b,
                          int32_t n_tail_p, int32_t n_tail_b, bool with_base);
    prefill_stats prefill_prompt_only(const std::vector<llama_token> & prompt_p, bool identical, int32_t n_tail = 1);
    int32_t keep_prefix(int stream, int32_t n);
    void restore_prompt_stream();
    void run_decode(const char * what);
    void batch_add(llama_token token, llama_pos pos, int stream, bool logits);
    const float * logits_at(int32_t batch_index) const;

    std::shared_ptr<model> model_;
    engine_params          params_;
    llama_context        * ctx_ = nullptr;
    llama_batch            batch_{};
    int32_t                batch_capacity_ = 0;
    int32_t                n_vocab_ = 0;

    std::array<std::vector<llama_token>, 2> cached_; // tokens in the KV cache, per stream
    std::array<int32_t, 2>                  out_idx_ = {-1, -1}; // batch index of each stream's logits
    std::array<std::vector<int32_t>, 2>     tail_rows_;          // batch index of each wanted logits row
    bool                                    identical_ = false;   // B's prompt is P's: B's logits are P's
    bool                                    base_active_ = true; // false when ratio == 0: B is never read
    bool                                    p_evicted_ = false;  // see evict_prompt_stream()
    std::vector<float>                      logits_p_copy_; // two-call mode keeps P's logits here
    std::unique_ptr<sampler_chain>          chain_;
    prefill_stats                           last_prefill_;
    int64_t                                 n_decode_calls_ = 0;
};

} // namespace linalign
