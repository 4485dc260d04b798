"""The grammar limits moved to :mod:`linalign.grammar_limits` (tool calls,
which the Aligner builds too, share them with ``response_format``); this
name stays for code that imports it from here."""
from ..grammar_limits import *  # noqa: F401,F403
from ..grammar_limits import __all__  # noqa: F401
