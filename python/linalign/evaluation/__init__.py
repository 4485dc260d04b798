"""The evaluation harness (``linalign eval``): the paper's personal-preference
protocol, offline preference pairs, and side-by-side generations, on the
logits and generations of an :class:`~linalign.Aligner`.
"""
from .compare import comparison_html, format_comparison, generate_comparison
from .data import load_pairs, load_persona_items, load_prompts
from .pairs import evaluate_pairs
from .persona import DEFAULT_PRINCIPLE_TEMPLATE, evaluate_persona
from .stats import wilson_interval

__all__ = [
    "DEFAULT_PRINCIPLE_TEMPLATE",
    "comparison_html",
    "evaluate_pairs",
    "evaluate_persona",
    "format_comparison",
    "generate_comparison",
    "load_pairs",
    "load_persona_items",
    "load_prompts",
    "wilson_interval",
]
