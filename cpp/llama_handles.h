// llama_handles: RAII owners of llama.cpp's handles, so that no path through
// the engine (an exception in a constructor included) leaks or double-frees.
#pragma once

#include "llama.h"

#include <memory>

namespace linalign {

struct context_deleter {
    void operator()(llama_context * ctx) const { llama_free(ctx); }
};
using context_ptr = std::unique_ptr<llama_context, context_deleter>;

struct sampler_deleter {
    void operator()(llama_sampler * smpl) const { llama_sampler_free(smpl); }
};
using sampler_ptr = std::unique_ptr<llama_sampler, sampler_deleter>;

// A llama_batch with room for n_tokens tokens of one sequence id each.
class batch_owner {
public:
    batch_owner() = default;
    explicit batch_owner(int32_t n_tokens) : batch_(llama_batch_init(n_tokens, 0, 1)), owned_(true) {}
    ~batch_owner() { reset(); }
    batch_owner(const batch_owner &) = delete;
    batch_owner & operator=(const batch_owner &) = delete;
    batch_owner(batch_owner && other) noexcept : batch_(other.batch_), owned_(other.owned_) { other.owned_ = false; }
    batch_owner & operator=(batch_owner && other) noexcept {
        if (this != &other) {
            reset();
            batch_ = other.batch_;
            owned_ = other.owned_;
            other.owned_ = false;
        }
        return *this;
    }
    llama_batch & get() { return batch_; }
    const llama_batch & get() const { return batch_; }

private:
    void reset() {
        if (owned_) {
            llama_batch_free(batch_);
            owned_ = false;
        }
        batch_ = {};
    }
    llama_batch batch_{};
    bool        owned_ = false;
};

} // namespace linalign
