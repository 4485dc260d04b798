// rpc: llama.cpp's RPC backend (ggml-rpc) as linalign uses it: remote
// workers as devices a model's layers can go to, and the worker's server.
// Everything is reached through the backend registry ("RPC"), so that _core
// still loads over a libggml built without -DGGML_RPC=ON (then
// rpc_available() is false and the rest throws).
#pragma once

#include "ggml-backend.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace linalign {

// A device a model can use, as the CLI, the server's /health and the Python
// API list it.
struct device_info {
    std::string name;         // ggml's name: "CPU", "CUDA0", "RPC0"
    std::string description;  // for an RPC device: its worker's endpoint
    std::string type;         // "cpu", "gpu", "igpu", "accel" or "rpc"
    size_t      memory_free  = 0;
    size_t      memory_total = 0;
};

// Whether this libggml has the RPC backend (llama_supports_rpc()).
bool rpc_available();

// The RPC protocol version of this libggml's client: (major, minor, patch).
std::tuple<int, int, int> rpc_protocol_version();

// The devices of each worker, in the order given (a worker may offer
// several). Connects to each worker: the caller checks beforehand that each
// is reachable and speaks this protocol version, since ggml-rpc aborts the
// process on a failed connection or handshake. The workers are NOT added to
// ggml's global device registry: a later load that passes no devices (a
// llama_cpp.Llama's included) must not pick them up, and would connect to
// them (and abort, a worker being gone) just to list their buffer types.
std::vector<ggml_backend_dev_t> rpc_worker_devices(const std::vector<std::string> & endpoints);

// Workers that models of this process hold a connection to (ggml-rpc keeps
// one per endpoint per process and shares it). A worker serves one client at
// a time, so a check that opens a connection of its own to one of these
// would wait for this very process: callers skip them. model.cpp holds and
// releases its workers.
void rpc_hold(const std::vector<std::string> & endpoints);
void rpc_release(const std::vector<std::string> & endpoints);
std::vector<std::string> rpc_held();

// Serves this process's devices to one client at a time on `endpoint`
// ("host:port"); returns only when it cannot start (throws then). devices:
// ggml device names; empty: the accelerators, or the CPU when there are none
// (as llama.cpp's rpc-server). cache_dir: where large tensors are cached by
// hash ("" for none).
void rpc_serve(const std::string & endpoint, const std::string & cache_dir, int32_t n_threads,
               const std::vector<std::string> & devices);

// ggml's registered devices (CPU, GPUs; never RPC workers, see above), with
// their memory.
std::vector<device_info> local_devices();

// From the first call on, an abort inside ggml (GGML_ABORT: ggml-rpc's only
// answer to a worker's connection failing mid-run) first says on stderr
// which of the workers added so far no longer accept connections. The
// process still aborts: nothing in ggml-rpc can recover. rpc_abort.cpp.
void rpc_name_lost_workers_on_abort(const std::vector<std::string> & endpoints);

device_info describe_device(ggml_backend_dev_t dev);

} // namespace linalign
