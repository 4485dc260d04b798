// model: loading or borrowing a llama_model and its vocabulary helpers.
#include "model.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace linalign {

static void check_gguf_file(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        throw std::invalid_argument("model file not found or not readable: " + path);
    }
    char magic[4] = {0, 0, 0, 0};
    f.read(magic, 4);
    if (f.gcount() != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        throw std::invalid_argument("not a GGUF file (bad magic): " + path);
    }
}

bool cpu_has_amx_weight_buffers() {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
            continue;
        }
        auto get_extra_bufts = (ggml_backend_dev_get_extra_bufts_t)
            ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts");
        for (ggml_backend_buffer_type_t * buft = get_extra_bufts ? get_extra_bufts(dev) : nullptr; buft && *buft; ++buft) {
            if (std::strcmp(ggml_backend_buft_name(*buft), "AMX") == 0) {
                return true;
            }
        }
    }
    return false;
}

// This machine's accelerators, as llama.cpp picks them when given no list:
// discrete GPUs (one per physical device, when two backends see the same
// one), integrated ones only where there is no discrete GPU.
static std::vector<ggml_backend_dev_t> local_offload_devices() {
    std::vector<ggml_backend_dev_t> gpus, igpus;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const enum ggml_backend_dev_type type = ggml_backend_dev_type(dev);
        if (type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            igpus.push_back(dev);
        } else if (type == GGML_BACKEND_DEVICE_TYPE_GPU) {
            ggml_backend_dev_props props;
            ggml_backend_dev_get_props(dev, &props);
            bool seen = false;
            for (ggml_backend_dev_t other : gpus) {
                ggml_backend_dev_props other_props;
                ggml_backend_dev_get_props(other, &other_props);
                seen = seen || (props.device_id && other_props.device_id &&
                                std::strcmp(props.device_id, other_props.device_id) == 0);
            }
            if (!seen) {
                gpus.push_back(dev);
            }
        }
    }
    return gpus.empty() ? igpus : gpus;
}

// llama.cpp reads llama_max_devices() floats from tensor_split, whatever
// the number of devices.
static std::vector<float> tensor_split_array(const std::vector<float> & split, size_t n_devices) {
    if (split.size() > n_devices) {
        throw std::invalid_argument("tensor_split has " + std::to_string(split.size()) + " proportions for " +
                                    std::to_string(n_devices) + " device(s) to offload to");
    }
    float sum = 0.0f;
    for (float x : split) {
        if (!std::isfinite(x) || x < 0.0f) {
            throw std::invalid_argument("tensor_split proportions must be finite and >= 0");
        }
        sum += x;
    }
    if (sum <= 0.0f) {
        throw std::invalid_argument("tensor_split proportions must not all be 0");
    }
    std::vector<float> out(llama_max_devices(), 0.0f);
    std::copy(split.begin(), split.end(), out.begin());
    return out;
}

model::model(const std::string & path, int32_t n_gpu_layers, bool use_mmap, const model_placement & placement) {
    check_gguf_file(path);
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = n_gpu_layers;
    // llama.cpp's AMX matrix multiplication crashes on some Sapphire Rapids
    // machines (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp issue 20824;
    // seen here with llama-cpp-python 0.3.36 built natively): weights stay
    // in plain CPU buffers where AMX ones would be used.
    if (cpu_has_amx_weight_buffers()) {
        params.use_extra_bufts = false;
    }
    params.load_mode    = use_mmap ? LLAMA_LOAD_MODE_AUTO : LLAMA_LOAD_MODE_NONE;

    // With RPC workers the device list is explicit (null-terminated), so
    // that they serve this model only (rpc.h: they are not registered).
    std::vector<ggml_backend_dev_t> offload;
    if (!placement.rpc_servers.empty()) {
        offload = rpc_worker_devices(placement.rpc_servers);
        for (ggml_backend_dev_t dev : local_offload_devices()) {
            offload.push_back(dev);
        }
    }
    std::vector<ggml_backend_dev_t> devices_arg(offload);
    devices_arg.push_back(nullptr);
    if (!offload.empty()) {
        params.devices = devices_arg.data();
    }
    std::vector<float> split;
    if (!placement.tensor_split.empty()) {
        const size_t n = placement.rpc_servers.empty() ? local_offload_devices().size() : offload.size();
        split = tensor_split_array(placement.tensor_split, n);
        params.tensor_split = split.data();
    }

    ptr_ = model_ptr(llama_model_load_from_file(path.c_str(), params), model_deleter{true});
    if (!ptr_) {
        throw std::runtime_error("llama.cpp failed to load the model (corrupt or unsupported GGUF?): " + path);
    }
    devices_.push_back(describe_device(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)));
    if (n_gpu_layers != 0) {
        for (ggml_backend_dev_t dev : placement.rpc_servers.empty() ? local_offload_devices() : offload) {
            devices_.push_back(describe_device(dev));
        }
    }
    rpc_servers_ = placement.rpc_servers;  // last: a constructor that throws never releases
    rpc_hold(rpc_servers_);
}

model::model(llama_model * borrowed) : ptr_(borrowed, model_deleter{false}) {
    if (borrowed == nullptr) {
        throw std::invalid_argument("borrowed model pointer is null (was the Llama closed?)");
    }
    // as the Llama loaded it, as far as can be told: the CPU and this
    // machine's accelerators (a Llama never names RPC workers)
    devices_.push_back(describe_device(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)));
    for (ggml_backend_dev_t dev : local_offload_devices()) {
        devices_.push_back(describe_device(dev));
    }
}

model::~model() { close(); }

void model::close() {
    if (ptr_) {
        ptr_.reset();
        rpc_release(rpc_servers_);
        rpc_servers_.clear();
    }
}

llama_model * model::get() const {
    if (!ptr_) {
        throw std::runtime_error("model is closed");
    }
    return ptr_.get();
}

const llama_vocab * model::vocab() const { return llama_model_get_vocab(get()); }

int32_t model::n_vocab()     const { return llama_vocab_n_tokens(vocab()); }
int32_t model::n_ctx_train() const { return llama_model_n_ctx_train(get()); }

std::vector<llama_token> model::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    if (text.size() > (size_t) INT32_MAX / 2) {
        throw std::invalid_argument("text too long to tokenize");
    }
    std::vector<llama_token> tokens(text.size() + 2);
    int32_t n = llama_tokenize(vocab(), text.data(), (int32_t) text.size(), tokens.data(), (int32_t) tokens.size(),
                               add_special, parse_special);
    if (n < 0) {
        tokens.resize(-n);
        n = llama_tokenize(vocab(), text.data(), (int32_t) text.size(), tokens.data(), (int32_t) tokens.size(),
                           add_special, parse_special);
    }
    if (n < 0) {
        throw std::runtime_error("tokenization failed");
    }
    tokens.resize(n);
    return tokens;
}

std::string model::token_to_piece(llama_token token, bool special) const {
    check_token(token);
    char buf[256];
    int32_t n = llama_token_to_piece(vocab(), token, buf, sizeof(buf), 0, special);
    if (n >= 0) {
        return std::string(buf, n);
    }
    std::string out(-n, '\0');
    n = llama_token_to_piece(vocab(), token, out.data(), (int32_t) out.size(), 0, special);
    out.resize(n < 0 ? 0 : n);
    return out;
}

bool model::is_eog(llama_token token) const { return llama_vocab_is_eog(vocab(), token); }
llama_token model::bos() const { return llama_vocab_bos(vocab()); }
llama_token model::eos() const { return llama_vocab_eos(vocab()); }
bool model::add_bos() const { return llama_vocab_get_add_bos(vocab()); }

std::optional<std::string> model::meta(const std::string & key) const {
    const int32_t n = llama_model_meta_val_str(get(), key.c_str(), nullptr, 0);
    if (n < 0) {
        return std::nullopt;
    }
    std::string out(n + 1, '\0');
    llama_model_meta_val_str(get(), key.c_str(), out.data(), out.size());
    out.resize(n);
    return out;
}

std::optional<std::string> model::chat_template() const {
    const char * tmpl = llama_model_chat_template(get(), nullptr);
    if (tmpl == nullptr) {
        return std::nullopt;
    }
    return std::string(tmpl);
}

std::string model::description() const {
    char buf[256];
    const int32_t n = llama_model_desc(get(), buf, sizeof(buf));
    return std::string(buf, n > 0 ? std::min<int32_t>(n, sizeof(buf) - 1) : 0);
}

void model::check_token(llama_token token) const {
    if (token < 0 || token >= n_vocab()) {
        throw std::invalid_argument("token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                                    std::to_string(n_vocab()) + ")");
    }
}

} // namespace linalign
