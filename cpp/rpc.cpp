// rpc: remote workers as model devices, the worker's server, and the device
// listing, over ggml-rpc reached through the backend registry.
#include "rpc.h"

#include "ggml-rpc.h"

#include <map>
#include <mutex>
#include <stdexcept>

namespace linalign {

// The functions of ggml-rpc.h that llama.cpp's own tools take from the
// registry (common/arg.cpp, tools/rpc): linking them directly would make
// _core unloadable over a libggml without the backend.
typedef ggml_backend_reg_t (*rpc_add_server_t)(const char * endpoint);
typedef void (*rpc_start_server_t)(const char * endpoint, const char * cache_dir, size_t n_threads, size_t n_devices,
                                   ggml_backend_dev_t * devices);

static const char * const REBUILD_HINT =
    "this llama-cpp-python was built without llama.cpp's RPC backend: rebuild it with -DGGML_RPC=ON "
    "(CMAKE_ARGS=\"-DGGML_RPC=ON\" pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python; "
    "--no-cache-dir, or pip hands back the wheel it built before)";

static ggml_backend_reg_t rpc_reg() {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    if (reg == nullptr) {
        throw std::runtime_error(REBUILD_HINT);
    }
    return reg;
}

template <typename fn_t>
static fn_t rpc_proc(const char * name) {
    auto fn = (fn_t) ggml_backend_reg_get_proc_address(rpc_reg(), name);
    if (fn == nullptr) {
        throw std::runtime_error(std::string("llama.cpp's RPC backend has no ") + name + " (another llama.cpp version?)");
    }
    return fn;
}

bool rpc_available() { return ggml_backend_reg_by_name("RPC") != nullptr; }

std::tuple<int, int, int> rpc_protocol_version() {
    return {RPC_PROTO_MAJOR_VERSION, RPC_PROTO_MINOR_VERSION, RPC_PROTO_PATCH_VERSION};
}

std::vector<ggml_backend_dev_t> rpc_worker_devices(const std::vector<std::string> & endpoints) {
    if (endpoints.size() > GGML_RPC_MAX_SERVERS) {
        throw std::invalid_argument("at most " + std::to_string(GGML_RPC_MAX_SERVERS) + " RPC workers, got " +
                                    std::to_string(endpoints.size()));
    }
    const auto add_server = rpc_proc<rpc_add_server_t>("ggml_backend_rpc_add_server");
    std::vector<ggml_backend_dev_t> devices;
    for (const std::string & endpoint : endpoints) {
        if (endpoint.empty() || endpoint.find(':') == std::string::npos) {
            throw std::invalid_argument("an RPC worker is HOST:PORT, got '" + endpoint + "'");
        }
        // ggml-rpc keeps one registry per endpoint for the process's life,
        // so adding a worker again returns the same devices
        ggml_backend_reg_t reg = add_server(endpoint.c_str());
        if (reg == nullptr || ggml_backend_reg_dev_count(reg) == 0) {
            throw std::runtime_error("RPC worker " + endpoint + " offers no devices");
        }
        for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); ++i) {
            devices.push_back(ggml_backend_reg_dev_get(reg, i));
        }
    }
    rpc_name_lost_workers_on_abort(endpoints);
    return devices;
}

static std::mutex                       g_held_mutex;
static std::map<std::string, int32_t>   g_held;  // endpoint -> models holding it

void rpc_hold(const std::vector<std::string> & endpoints) {
    std::lock_guard<std::mutex> lock(g_held_mutex);
    for (const std::string & e : endpoints) {
        ++g_held[e];
    }
}

void rpc_release(const std::vector<std::string> & endpoints) {
    std::lock_guard<std::mutex> lock(g_held_mutex);
    for (const std::string & e : endpoints) {
        auto it = g_held.find(e);
        if (it != g_held.end() && --it->second <= 0) {
            g_held.erase(it);
        }
    }
}

std::vector<std::string> rpc_held() {
    std::lock_guard<std::mutex> lock(g_held_mutex);
    std::vector<std::string> out;
    for (const auto & [endpoint, n] : g_held) {
        out.push_back(endpoint);
    }
    return out;
}

static std::vector<ggml_backend_dev_t> worker_devices(const std::vector<std::string> & names) {
    std::vector<ggml_backend_dev_t> devices;
    for (const std::string & name : names) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
        if (dev == nullptr) {
            std::string known;
            for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
                known += std::string(known.empty() ? "" : ", ") + ggml_backend_dev_name(ggml_backend_dev_get(i));
            }
            throw std::invalid_argument("no device named '" + name + "' here (devices: " + known + ")");
        }
        devices.push_back(dev);
    }
    if (devices.empty()) {
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
                devices.push_back(dev);
            }
        }
    }
    if (devices.empty()) {
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        if (cpu == nullptr) {
            throw std::runtime_error("this libggml has no CPU device");
        }
        devices.push_back(cpu);
    }
    return devices;
}

void rpc_serve(const std::string & endpoint, const std::string & cache_dir, int32_t n_threads,
               const std::vector<std::string> & devices) {
    if (n_threads < 1) {
        throw std::invalid_argument("n_threads must be >= 1, got " + std::to_string(n_threads));
    }
    if (endpoint.find(':') == std::string::npos) {
        throw std::invalid_argument("the worker's endpoint is HOST:PORT, got '" + endpoint + "'");
    }
    const auto start_server = rpc_proc<rpc_start_server_t>("ggml_backend_rpc_start_server");
    std::vector<ggml_backend_dev_t> devs = worker_devices(devices);
    // serves clients until the process ends; it returns only when it could
    // not make a backend or bind (it has said why on stderr)
    start_server(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(), (size_t) n_threads, devs.size(),
                 devs.data());
    throw std::runtime_error("the RPC worker could not serve on " + endpoint +
                             " (address in use, or not an address of this machine?)");
}

static const char * device_type_name(ggml_backend_dev_t dev) {
    if (ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev)) == std::string("RPC")) {
        return "rpc";
    }
    switch (ggml_backend_dev_type(dev)) {
        case GGML_BACKEND_DEVICE_TYPE_CPU:   return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU:   return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU:  return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        default:                             return "other";
    }
}

device_info describe_device(ggml_backend_dev_t dev) {
    if (dev == nullptr) {
        throw std::invalid_argument("null device");
    }
    device_info info;
    info.name        = ggml_backend_dev_name(dev);
    info.description = ggml_backend_dev_description(dev);
    info.type        = device_type_name(dev);
    ggml_backend_dev_memory(dev, &info.memory_free, &info.memory_total);
    return info;
}

std::vector<device_info> local_devices() {
    std::vector<device_info> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        out.push_back(describe_device(ggml_backend_dev_get(i)));
    }
    return out;
}

} // namespace linalign
