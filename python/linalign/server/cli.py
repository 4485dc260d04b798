"""The command line of ``linalign serve``.

    linalign serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--n-ctx N]
                   [--parallel N] [--queue N] [--threads N] [--threads-batch N]
                   [--n-batch N] [--flash-attn auto|on|off] [--[no-]cache-prompt] [--n-gpu-layers N]
                   [--kv-layout pool|per-stream] [--[no-]kv-unified] [--kv-cells N] [--kv-reserve N]
                   [--max-principles K] [--api-key KEY] [--metrics-public] [--preset NAME=PRINCIPLE[:RATIO]]...
                   [--presets FILE]... [--slot-save-path DIR] [--rpc HOST:PORT[,...]] [--tensor-split P1,P2,...]

A bad preset (flag or file) is reported on stderr, naming where it is, and
the command exits with status 2 before loading the model.

With ``--rpc`` the model's layers go to llama.cpp RPC workers, and this
process is an HTTP front that runs the engine in a supervised child process
(:mod:`linalign.rpc.front`): ggml-rpc aborts the process that holds the
model when a worker goes away.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from ..aligner import Aligner
from ..cli_common import add_rpc_options
from ..devices import parse_tensor_split, resolve_n_gpu_layers
from ..principles import MAX_PRINCIPLES
from ..threads import physical_cores
from .app import create_app
from .presets import PresetError, Presets, load_presets
from .scheduler import Scheduler

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linalign serve", description="OpenAI-compatible server with per-request "
                                "principles (linear alignment), every request decoded in one batch.")
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--n-ctx", type=int, default=4096,
                   help="the most tokens one stream of a request may hold, prompt and answer (default 4096). "
                        "The KV pool holds --parallel x --n-ctx cells by default, what plain decoding allocates (see --kv-layout)")
    p.add_argument("--parallel", type=int, default=1,
                   help="slots: requests decoded at once, all in one batched forward per step (default 1)")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait for a slot; more get 503 (default 16)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads for decoding (default: the physical cores, {physical_cores()} here)")
    p.add_argument("--threads-batch", type=int, default=None,
                   help="CPU threads for prompt batches (default: as --threads; one pool)")
    p.add_argument("--n-batch", type=int, default=512,
                   help="tokens per step: one per running stream, the rest for prompt chunks (default 512)")
    p.add_argument("--flash-attn", "-fa", choices=["auto", "on", "off"], default=None,
                   help="flash attention, as llama-server's -fa. Default: off on the CPU, where it measured "
                        "slower once a conversation holds a few hundred tokens (docs/serving.md), and auto "
                        "(on where the backend runs it) when --n-gpu-layers offloads; off gives logits bit for "
                        "bit those of a plain llama_cpp.Llama")
    p.add_argument("--cache-prompt", action=argparse.BooleanOptionalAction, default=True,
                   help="keep each slot's KV after a request, so that the next request sharing a prefix with it "
                        "prefills only the rest (default on)")
    p.add_argument("--n-gpu-layers", type=int, default=None,
                   help="layers to offload to GPUs and RPC workers (-1: all; default: all with --rpc, else 0)")
    add_rpc_options(p)
    # the supervised engine of --rpc: serves, never supervises (rpc/supervisor.py)
    p.add_argument("--engine-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (also read from LINALIGN_API_KEY)")
    p.add_argument("--metrics-public", action="store_true",
                   help="GET /metrics (Prometheus' text format, docs/metrics.md) needs no API key")
    p.add_argument("--preset", action="append", default=[], metavar="NAME=PRINCIPLE[:RATIO]",
                   help="serve a principle as the model id MODEL:NAME (repeatable); the text after the last colon "
                        "is the ratio when it is a number or auto, e.g. --preset 'pirate=Always answer like a pirate.:4'")
    p.add_argument("--presets", action="append", default=[], metavar="FILE",
                   help="presets from a JSON or TOML file: NAME = principle, or a table with principle, ratio "
                        "and sampling defaults (temperature, top_p, top_k, min_p, repeat_penalty, ...); repeatable")
    p.add_argument("--kv-layout", choices=["pool", "per-stream"], default=None,
                   help="pool (default): one pool of KV cells for every stream, where a prefix the streams "
                        "share (principle_position end: the whole history) is stored once, a request starts "
                        "when its prompts' cells and a reserve for its answer fit, and one that outgrows the "
                        "pool is preempted and resumes, never failed; logits move by rounding with where "
                        "cells lie. per-stream: a buffer of --n-ctx cells per stream of every slot, each "
                        "stream's logits those of a context of its own (docs/serving.md)")
    p.add_argument("--kv-unified", action=argparse.BooleanOptionalAction, default=None,
                   help="--kv-unified is --kv-layout pool, --no-kv-unified is --kv-layout per-stream")
    p.add_argument("--kv-cells", type=int, default=None, metavar="N",
                   help="the pool's cells (default --parallel x --n-ctx: streams that share their history, as with "
                        "principle_position end, hold a chat as long as plain decoding's; 'system' holds it once per "
                        "stream; llama.cpp rounds it up to a multiple of 256)")
    p.add_argument("--kv-reserve", type=int, default=256, metavar="N",
                   help="tokens per stream the pool keeps free for a request's answer when it starts (at most its "
                        "max_tokens; default 256): more means fewer preemptions and fewer requests at once")
    p.add_argument("--max-principles", type=int, default=None, metavar="K",
                   help="principles one request may compose. Default with the pool: 4 (a stream costs only the "
                        "cells it holds); per-stream: the most any preset composes, at least 1 (each is one more "
                        "stream's buffer of --n-ctx cells per slot)")
    p.add_argument("--slot-save-path", metavar="DIR", default=None,
                   help="the folder of slot files: POST /slots/ID?action=save|restore|erase with "
                        "{\"filename\": NAME} saves a slot's prompt cache there and restores it, after a restart "
                        "too (docs/slot_files.md); made if missing. Nothing is restored by itself at start-up. "
                        "Without it those actions answer 501")
    p.add_argument("--count-passes", action="store_true",
                   help="count llama.cpp's forward passes (/health's forward_passes, null without it): an eval "
                        "callback that makes a GPU synchronize after every graph split, so for measuring only")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the one-token decode at start-up that maps the weights in and runs every kernel once, "
                        "so that the first request does not pay for it (always skipped with --count-passes)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    return p


def _warm_up(aligner: Aligner) -> None:
    """One token, decoded and forgotten, as llama-server warms up: the first
    decode of a process maps the weights in and makes the kernels' buffers,
    which a restored slot's first turn would otherwise pay for."""
    aligner.create_completion("Hi", max_tokens=1, temperature=0.0, ratio=0)
    aligner.reset()


def _kv_unified(layout: str | None, unified: bool | None) -> bool:
    """--kv-layout and --[no-]kv-unified as one choice (default: the pool)."""
    if layout is not None and unified is not None and (layout == "pool") != unified:
        flag = "--kv-unified" if unified else "--no-kv-unified"
        raise ValueError(f"--kv-layout {layout} and {flag} disagree: give one")
    if layout is not None:
        return layout == "pool"
    return True if unified is None else unified


# Principles a request composes by default with the pool: each is a stream
# that costs only the cells it holds, within llama.cpp's sequences (256 in
# all; slots x streams) and the step's batch (a token per running stream).
DEFAULT_POOL_PRINCIPLES = 4
_MAX_SEQUENCES = 256


def _default_max_principles(parallel: int, n_batch: int) -> int:
    return max(1, min(DEFAULT_POOL_PRINCIPLES, _MAX_SEQUENCES // parallel - 1, n_batch // parallel - 1))


def _kv_description(aligner: Aligner) -> str:
    engine = aligner.engine
    if engine.kv_unified:
        return f"KV pool of {engine.n_cells_total} cells"
    return f"a KV buffer per stream ({engine.n_cells_total} cells)"


def _flash_attn(flag: str | None, n_gpu_layers: int) -> bool | str:
    """--flash-attn as the Aligner takes it; unset: off on the CPU, auto when offloading."""
    if flag is None:
        flag = "auto" if n_gpu_layers != 0 else "off"
    return {"auto": "auto", "on": True, "off": False}[flag]


def main(argv: Sequence[str]) -> int:
    """Entry point of ``linalign serve``; returns the exit status."""
    import uvicorn

    parser = _parser()
    args = parser.parse_args(list(argv))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    if not 1 <= args.parallel <= 64:
        parser.error(f"--parallel must be in [1, 64], got {args.parallel}")
    if args.queue < 0:
        parser.error(f"--queue must be >= 0, got {args.queue}")
    api_key = args.api_key or os.environ.get("LINALIGN_API_KEY") or None
    try:
        preset_list = load_presets(args.preset, args.presets)
    except PresetError as e:
        print(f"linalign serve: error: {e}", file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        kv_unified = _kv_unified(args.kv_layout, args.kv_unified)
    except ValueError as e:
        parser.error(str(e))
    if args.kv_cells is not None and not kv_unified:
        parser.error("--kv-cells sizes the KV pool: not with --kv-layout per-stream")
    if args.kv_reserve < 0:
        parser.error(f"--kv-reserve must be >= 0, got {args.kv_reserve}")
    needed = max([preset.composition().k for preset in preset_list], default=1)
    default_principles = _default_max_principles(args.parallel, args.n_batch) if kv_unified else 1
    max_principles = args.max_principles if args.max_principles is not None else max(needed, default_principles)
    if not 1 <= max_principles <= MAX_PRINCIPLES:
        parser.error(f"--max-principles must be in [1, {MAX_PRINCIPLES}], got {max_principles}")
    if max_principles < needed:
        parser.error(f"--max-principles {max_principles}: a preset composes {needed} principles")

    try:
        n_gpu_layers = resolve_n_gpu_layers(args.n_gpu_layers, args.rpc)
        parse_tensor_split(args.tensor_split)
    except ValueError as e:
        parser.error(str(e))
    if args.engine_child:
        from ..rpc.supervisor import end_with_parent
        end_with_parent()
    if args.rpc and not args.engine_child:
        from ..rpc import RpcError, parse_endpoints, require_rpc
        from ..rpc.front import serve_supervised
        try:
            endpoints = parse_endpoints(args.rpc)
            require_rpc()
        except (ValueError, RpcError) as e:
            print(f"linalign serve: error: {e}", file=sys.stderr, flush=True)
            return 2
        return serve_supervised(list(argv), endpoints, host=args.host, port=args.port, log_level=args.log_level)

    slot_dir = None
    if args.slot_save_path is not None:
        slot_dir = Path(args.slot_save_path).expanduser().resolve()
        try:
            slot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            parser.error(f"--slot-save-path {args.slot_save_path}: {e}")
        if not slot_dir.is_dir():
            parser.error(f"--slot-save-path {args.slot_save_path} is not a folder")
    try:
        aligner = Aligner(args.model, n_ctx=args.n_ctx, n_parallel=args.parallel, n_batch=args.n_batch,
                          n_gpu_layers=n_gpu_layers, rpc_servers=args.rpc, tensor_split=args.tensor_split,
                          n_threads=args.threads, n_threads_batch=args.threads_batch,
                          cache_prompt=args.cache_prompt, max_principles=max_principles,
                          kv_unified=kv_unified, kv_cells=args.kv_cells, kv_reserve=args.kv_reserve,
                          flash_attn=_flash_attn(args.flash_attn, n_gpu_layers), count_passes=args.count_passes)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        print(f"linalign serve: cannot load the model: {e}", flush=True)
        return 1
    if not (args.no_warmup or args.count_passes):
        _warm_up(aligner)
    scheduler = Scheduler(aligner.engine, queue_size=args.queue)
    model_id = Path(aligner.model_path).name
    presets = Presets(model_id, preset_list)
    app = create_app(aligner, scheduler, model_id=model_id, api_key=api_key, presets=presets,
                     metrics_public=args.metrics_public, slot_save_path=slot_dir)
    print(f"linalign serve: {model_id} on http://{args.host}:{args.port} "
          f"(parallel {args.parallel}, queue {args.queue}, n_ctx {args.n_ctx} per stream, "
          f"flash attention {args.flash_attn or ('auto' if n_gpu_layers else 'off')}, prompt cache {'on' if args.cache_prompt else 'off'}, "
          f"{_kv_description(aligner)}, up to {max_principles} principle(s) per request{', API key required' if api_key else ''}"
          f"{f', slot files in {slot_dir}' if slot_dir else ''})", flush=True)
    print(f"linalign serve: devices: {', '.join(d['name'] + ' (' + d['description'] + ')' for d in aligner.devices)}",
          flush=True)
    if len(presets):
        print(f"linalign serve: presets: {', '.join(presets.ids[1:])}", flush=True)
    if not args.engine_child:  # the supervised engine's address is the front's business
        print(f"linalign serve: try it at http://{args.host}:{args.port}/", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.log_level in ("info", "debug"), timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind
        return int(e.code or 1)
    finally:
        scheduler.close()
        aligner.close()
    return 0 if server.started else 1
