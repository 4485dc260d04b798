"""What ``linalign bench`` prints and writes: a terminal table, the JSON
document, a PNG chart."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["format_table", "write_json", "write_png"]

_MiB = 1024 * 1024


def or_dash(x: object, spec: str) -> str:
    """``x`` formatted by ``spec``, or "-" when there is no value."""
    return "-" if x is None else format(x, spec)


def _mmm(s: dict | None, fmt: str = "{:.1f}") -> str:
    if s is None:
        return "-"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def format_table(doc: dict) -> str:
    cfg, w, m = doc["config"], doc["workload"], doc["machine"]
    lines = [
        f"linalign bench: {Path(doc['model']['path']).name} ({doc['model']['description']}, "
        f"n_vocab {doc['model']['n_vocab']})",
        f"machine: {m['cpu']}, {m['cpu_count']} CPUs; threads {cfg['threads']}; n_ctx {cfg['n_ctx']}; "
        f"load avg {m['loadavg_start'][0]:.2f} at start, {m['loadavg_after_timing'][0]:.2f} after timing",
        f"workload: P {w['prompt_p_tokens']} + B {w['prompt_b_tokens']} prompt tokens ({w['shared_prefix_tokens']} shared), "
        f"max_tokens {cfg['max_tokens']}, greedy, ratio {w['ratio']}, top_p {w['top_p']}; "
        f"{cfg['reps']} reps after a warm-up, methods interleaved; median (min-max)",
        "",
        f"{'method':10s} {'decode tok/s':>24s} {'TTFT ms':>24s} {'prefill tok/s':>24s} {'tokens':>7s}",
    ]
    for name, r in doc["results"].items():
        n = r["n_generated"]
        tokens = str(n[0]) if len(set(n)) == 1 else f"{min(n)}-{max(n)}"
        lines.append(f"{name:10s} {_mmm(r['decode_tps']):>24s} {_mmm(r['ttft_ms']):>24s} "
                     f"{_mmm(r['prefill_tps'], '{:.0f}'):>24s} {tokens:>7s}")
    if doc["ratios"]:
        lines += ["", "decode speed ratios: of medians; of best reps; per-repetition ratio median (min-max)"]
        for key, r in doc["ratios"].items():
            lines.append(f"  {key:20s} {r['of_medians']:6.2f} {r['of_best']:6.2f}   {_mmm(r['per_rep'], '{:.2f}')}")
    if doc["combine"]:
        lines += ["", "combine step alone (C++; linear-alignment sampler on the logits, as the engine runs it), us per token: median (min-max)"]
        for key, c in doc["combine"].items():
            pct, best = c.get("percent_of_floor_step"), c.get("percent_of_best_floor_step")
            pct_s = (f"  = {pct:.2f}% of the median / {best:.2f}% of the best floor decode step"
                     if pct is not None else "")
            lines.append(f"  n_vocab {c['n_vocab']:6d}: {_mmm({'median': c['us_median'], 'min': c['us_min'], 'max': c['us_max']})}"
                         f"  (nucleus {c['nucleus_tokens']} tokens){pct_s}")
        lines.append(f"  152k logits: {doc['combine']['vocab_152k']['logits']}")
    mem = doc["memory"]
    if mem:
        kv = doc["kv_cache_one_sequence"]
        lines += ["", f"peak RSS (fresh process each); one sequence's KV cache = {kv['bytes'] / _MiB:.1f} MiB "
                      f"({kv['n_layer']} layers x {kv['n_ctx']} x ({kv['n_embd_k_gqa']}+{kv['n_embd_v_gqa']}) x 2 B)"]
        for name, r in mem.items():
            extra = ""
            if "minus_plain_bytes" in r:
                extra = (f"   - plain = {r['minus_plain_bytes'] / _MiB:+7.1f} MiB = {r['minus_plain_over_one_kv']:.2f} x one KV;"
                         f" beyond its {r['extra_kv_sequences']} extra KV: {r['beyond_kv_bytes'] / _MiB:+6.1f} MiB")
            lines.append(f"  {name:16s} {r['peak_rss_bytes'] / _MiB:8.1f} MiB{extra}")
        lines.append(f"  (weights file: {doc['model']['size_bytes'] / _MiB:.1f} MiB)")
    if doc["multiturn"]:
        lines += ["", "multi-turn chat (5 turns): prompt tokens decoded per turn, P/B (shared), prefill ms",
                  f"  {'turn':4s} {'prompt P/B':>11s} {'with reuse':>28s} {'without reuse':>28s}"]
        for row in doc["multiturn"]:
            def cell(x: dict) -> str:
                return f"{x['decoded'][0]}/{x['decoded'][1]} ({x['shared']}) {x['prefill_s'] * 1e3:6.1f} ms"
            lines.append(f"  {row['turn']:4d} {row['prompt_tokens'][0]:>5d}/{row['prompt_tokens'][1]:<5d} "
                         f"{cell(row['reuse']):>28s} {cell(row['no_reuse']):>28s}")
    if doc.get("targets"):
        lines += ["", "targets (issue 3)"]
        for t in doc["targets"]:
            value = t["value"]
            v = f"{value:.3f}" if isinstance(value, float) else str(value)
            bound = f"1 +- {t['bound']}" if t["op"] == "within" else f"{t['op']} {t['bound']}"
            lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {v} (target {bound})")
    return "\n".join(lines)


def write_json(doc: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")


def write_png(doc: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    res = doc["results"]
    names = list(res)
    fig, axes = plt.subplots(1, 3 if doc["memory"] else 2, figsize=(14, 4.2))

    def bars(ax, key: str, title: str) -> None:
        med = [res[n][key]["median"] for n in names]
        lo = [res[n][key]["median"] - res[n][key]["min"] for n in names]
        hi = [res[n][key]["max"] - res[n][key]["median"] for n in names]
        colors = ["tab:orange" if n == "linalign" else "tab:gray" for n in names]
        ax.bar(names, med, yerr=[lo, hi], capsize=4, color=colors)
        ax.set_title(title)
        for i, v in enumerate(med):
            ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)

    bars(axes[0], "decode_tps", "decode tokens/s (higher is better)")
    bars(axes[1], "ttft_ms", "time to first token, ms (lower is better)")
    if doc["memory"]:
        mem = doc["memory"]
        ax = axes[2]
        mem_names = list(mem)
        ax.bar(mem_names, [mem[n]["peak_rss_bytes"] / _MiB for n in mem_names],
               color=["tab:orange" if n.startswith("linalign") else "tab:gray" for n in mem_names])
        ax.set_title("peak RSS, MiB")
        ax.tick_params(axis="x", rotation=30)
    m = doc["machine"]
    fig.suptitle(f"linalign bench: {Path(doc['model']['path']).name}, {m['cpu']} x{m['cpu_count']}, "
                 f"{doc['config']['threads']} threads, {doc['config']['max_tokens']} tokens, median and min-max of "
                 f"{doc['config']['reps']} reps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
