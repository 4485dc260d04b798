// rpc_abort: names the lost RPC worker when ggml aborts the process.
//
// ggml-rpc has no error path for a worker that goes away mid-run: a failed
// send or receive is RPC_STATUS_ASSERT, i.e. GGML_ABORT("Remote RPC server
// crashed or returned malformed response"), on the connection's dispatcher
// thread. Nothing can be unwound from there, but the process can say which
// worker it lost before it ends: ggml calls the abort callback with its
// message just before abort().
#include "rpc.h"

#include "ggml.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#ifndef _WIN32
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

namespace linalign {

static std::mutex               g_workers_mutex;
static std::vector<std::string> g_workers;
static ggml_abort_callback_t    g_previous_callback = nullptr;

#ifndef _WIN32
// Whether `endpoint` accepts a TCP connection within timeout_ms. A worker
// busy with its one client still accepts (the kernel queues the connection),
// so "no" means the worker's process or machine is gone.
static bool accepts_connections(const std::string & endpoint, int timeout_ms, std::string & why) {
    const size_t colon = endpoint.rfind(':');
    const std::string host = endpoint.substr(0, colon), port = endpoint.substr(colon + 1);
    addrinfo hints{};
    hints.ai_family   = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * found = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
        why = "cannot resolve " + host;
        return false;
    }
    bool ok = false;
    why = "no answer within " + std::to_string(timeout_ms) + " ms";
    const int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
    if (fd >= 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        int rc = connect(fd, found->ai_addr, found->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            pollfd pfd{fd, POLLOUT, 0};
            if (poll(&pfd, 1, timeout_ms) == 1) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                rc = err == 0 ? 0 : -1;
                errno = err;
            } else {
                errno = ETIMEDOUT;
            }
        }
        ok = rc == 0;
        if (!ok && errno != ETIMEDOUT) {
            why = std::strerror(errno);
        }
        close(fd);
    }
    freeaddrinfo(found);
    return ok;
}
#endif

static void on_ggml_abort(const char * message) {
    if (g_previous_callback == nullptr) {  // else it prints the message itself, below
        std::fprintf(stderr, "%s\n", message);
    }
    std::vector<std::string> workers;
    if (g_workers_mutex.try_lock()) {  // never wait here: the abort may come from under it
        workers = g_workers;
        g_workers_mutex.unlock();
    }
    std::string lost, alive;
    for (const std::string & endpoint : workers) {
#ifndef _WIN32
        std::string why;
        if (!accepts_connections(endpoint, 1000, why)) {
            lost += (lost.empty() ? "" : ", ") + endpoint + " (" + why + ")";
            continue;
        }
#endif
        alive += (alive.empty() ? "" : ", ") + endpoint;
    }
    if (!lost.empty()) {
        std::fprintf(stderr,
                     "linalign: lost the RPC worker %s. ggml-rpc cannot go on without it and ends this process; "
                     "start the worker again and reload the model (linalign serve --rpc restarts its engine by "
                     "itself)\n", lost.c_str());
    } else if (!workers.empty()) {
        std::fprintf(stderr,
                     "linalign: ggml aborted with RPC workers in use (%s, each still accepting connections: a "
                     "connection dropped, or a worker restarted)\n", alive.c_str());
    }
    std::fflush(stderr);
    if (g_previous_callback != nullptr) {
        g_previous_callback(message);
    }
}

void rpc_name_lost_workers_on_abort(const std::vector<std::string> & endpoints) {
    std::lock_guard<std::mutex> lock(g_workers_mutex);
    if (g_workers.empty()) {
        ggml_abort_callback_t previous = ggml_set_abort_callback(on_ggml_abort);
        if (previous != on_ggml_abort) {
            g_previous_callback = previous;
        }
    }
    for (const std::string & endpoint : endpoints) {
        bool known = false;
        for (const std::string & w : g_workers) {
            known = known || w == endpoint;
        }
        if (!known) {
            g_workers.push_back(endpoint);
        }
    }
}

} // namespace linalign
