// model: a GGUF model as the engine sees it, owned (loaded from a file) or
// borrowed (a llama_cpp.Llama's model, so its weights are not loaded twice),
// plus the vocabulary operations the Python layer needs.
#pragma once

#include "llama.h"
#include "rpc.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace linalign {

// True when llama.cpp would put CPU weights in AMX buffers (see model.cpp).
bool cpu_has_amx_weight_buffers();

// Where a model's offloaded layers go beyond this machine's own devices.
struct model_placement {
    // RPC workers ("host:port"), whose devices come first, as llama.cpp
    // orders them (fewer transfers); empty: llama.cpp picks the devices
    std::vector<std::string> rpc_servers;
    // proportions of the offloaded layers per device, in that order (the
    // workers' devices, then local GPUs); empty: by free memory
    std::vector<float> tensor_split;
};

class model {
public:
    // Loads a GGUF file. Throws std::invalid_argument for a missing or
    // non-GGUF file or a bad placement and std::runtime_error when llama.cpp
    // cannot load it.
    model(const std::string & path, int32_t n_gpu_layers, bool use_mmap, const model_placement & placement = {});

    // Wraps a model someone else owns (and keeps alive longer than this).
    explicit model(llama_model * borrowed);

    ~model();
    model(const model &) = delete;
    model & operator=(const model &) = delete;

    llama_model       * get() const;
    const llama_vocab * vocab() const;

    int32_t n_vocab() const;
    int32_t n_ctx_train() const;
    bool    owns_weights() const { return ptr_.get_deleter().owned; }

    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string token_to_piece(llama_token token, bool special) const;
    bool is_eog(llama_token token) const;
    llama_token bos() const;
    llama_token eos() const;
    bool add_bos() const;

    std::optional<std::string> meta(const std::string & key) const;
    std::optional<std::string> chat_template() const;
    std::string description() const;

    void check_token(llama_token token) const;

    // The devices the weights may lie on: the CPU, then those layers are
    // offloaded to (none when nothing is offloaded).
    const std::vector<device_info> & devices() const { return devices_; }

    void close();
    bool closed() const { return !ptr_; }

private:
    // frees the weights only when this object loaded them
    struct model_deleter {
        bool owned = false;
        void operator()(llama_model * m) const {
            if (owned) {
                llama_model_free(m);
            }
        }
    };
    using model_ptr = std::unique_ptr<llama_model, model_deleter>;
    model_ptr ptr_{nullptr, model_deleter{false}};
    std::vector<device_info> devices_;
    std::vector<std::string> rpc_servers_;  // held (rpc_hold) while the weights are loaded
};

} // namespace linalign
