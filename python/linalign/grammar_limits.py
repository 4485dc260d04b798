"""Bounds on what one request may ask of the grammar compiler.

A ``response_format`` JSON schema (or a tool's ``parameters``, whose call
grammar :mod:`linalign.tool_calls.grammar` builds with the same converter)
is turned into GBNF by llama-cpp-python's
``json_schema_to_gbnf`` (on the event loop) and the GBNF into a grammar
sampler by llama.cpp's ``llama_sampler_init_grammar`` (on the engine thread).
Neither bounds its work:

* the converter writes a repetition bound ``N`` (``maxLength``,
  ``maxItems``, a pattern's ``{m,n}``) as ``N`` nested groups,
  ``(x (x (x ...)?)?)?``, and llama.cpp's GBNF parser
  (``llama_grammar_parser::parse_sequence`` / ``parse_alternates``,
  src/llama-grammar.cpp) recurses twice per group: from about 18,500
  levels it overflows an 8 MiB thread stack and the server dies with
  SIGSEGV. Its own guard (``MAX_REPETITION_THRESHOLD``, 2000 symbols, two
  per level) is only checked after the recursion has returned, so it
  refuses 1001..~18,000 levels cleanly and cannot stop deeper ones;
* the converter's text grows with the bounds, ``minLength: 10**9`` asks
  it for a gigabyte string, and its object rule is quadratic in the
  optional properties of one object (900 took 5 s, blocking every client);
* llama.cpp's grammar sampler keeps one parse stack per way the output so
  far can be read: a pattern quantifier over something that may match the
  empty string (``^(a?){0,200}$``: 94 s for one token), counted ranges
  nested in counted ranges (``^((ab){0,30}){0,30}$``: ~1 s a token and
  growing) and overlapping counted ranges in sequence
  (``^a{0,500}a{0,500}$``: 0.45 s a token) stall every slot of the server.

:func:`check_json_schema` bounds the schema before the converter sees it and
:func:`check_gbnf` bounds GBNF text (the converter's output, or a grammar a
caller wrote) before llama.cpp sees it. Both raise :class:`GrammarTooLarge`
naming what was too large and where. The limits are the module constants
below; a schema within them compiles in milliseconds, and its sampler costs
at most ~0.1 s a token on a 49k vocabulary.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

__all__ = [
    "GrammarTooLarge",
    "MAX_ALTERNATIVES",
    "MAX_ENUM_VALUES",
    "MAX_GBNF_BYTES",
    "MAX_GBNF_NESTING",
    "MAX_GBNF_RULES",
    "MAX_NAME_LENGTH",
    "MAX_NESTED_RANGE_PRODUCT",
    "MAX_OBJECT_PROPERTIES",
    "MAX_PATTERN_AMBIGUITY",
    "MAX_PATTERN_NESTING",
    "MAX_REPETITION",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "MAX_TOTAL_PROPERTIES",
    "MAX_TOTAL_REPETITION",
    "check_gbnf",
    "check_json_schema",
]

# -- the schema ---------------------------------------------------------------
#: bytes of the schema as compact JSON
MAX_SCHEMA_BYTES = 64 * 1024
#: nesting of JSON objects and arrays in the schema document
MAX_SCHEMA_DEPTH = 64
#: one repetition count: minLength, maxLength, minItems, maxItems, a pattern's
#: {m}, {m,} or {m,n}. 1000 is also the most llama.cpp's parser accepts for
#: the nested form the converter writes (1001 is refused).
MAX_REPETITION = 1000
#: all repetition counts of the document together (each bound counts its
#: larger number): the converter's text and llama.cpp's rules grow with it
MAX_TOTAL_REPETITION = 10_000
#: properties of one object (those of allOf's components together): the
#: converter's object rule is quadratic in them
MAX_OBJECT_PROPERTIES = 100
#: properties of all objects of the document together
MAX_TOTAL_PROPERTIES = 500
#: entries of one anyOf, oneOf, allOf or prefixItems list
MAX_ALTERNATIVES = 64
#: values of one enum
MAX_ENUM_VALUES = 1000
#: characters of a property or definition name (names end up in rule names,
#: which the converter repeats once per repetition)
MAX_NAME_LENGTH = 256
#: group nesting in one pattern
MAX_PATTERN_NESTING = 32
#: a counted range inside counted ranges: the product of their widths
#: (n - m; 1 for ?, *, +, {m,}), e.g. ((ab){0,10}){0,10} is 100
MAX_NESTED_RANGE_PRODUCT = 100
#: the widths of all counted ranges of all patterns of the document, less the
#: widest of each pattern: ranges in sequence that can match the same text
#: (a{0,300}a{0,300}) keep one parse stack per way of splitting it
MAX_PATTERN_AMBIGUITY = 300

# -- the GBNF -----------------------------------------------------------------
#: bytes of GBNF text
MAX_GBNF_BYTES = 256 * 1024
#: nesting of ( ) groups: llama.cpp's parser recurses twice per level
MAX_GBNF_NESTING = 1100
#: rules llama.cpp's parser creates: one per definition, per group, per
#: ?/*/+ and per optional repetition of a {m,n}
MAX_GBNF_RULES = 25_000


class GrammarTooLarge(ValueError):
    """A schema or grammar beyond this module's limits; the message names what."""


_COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")
_NAME_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_LISTS = {"anyOf": MAX_ALTERNATIVES, "oneOf": MAX_ALTERNATIVES, "allOf": MAX_ALTERNATIVES,
          "prefixItems": MAX_ALTERNATIVES, "enum": MAX_ENUM_VALUES}


def _pointer(path: tuple[str, ...]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)


def _walk(schema: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every value of the document with its path, depth first, iteratively
    (the depth is checked before anything recurses on the schema)."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if len(path) > MAX_SCHEMA_DEPTH:
            raise GrammarTooLarge(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at {_pointer(path)})")
        yield path, node
        if isinstance(node, dict):
            stack.extend(((*path, str(k)), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend(((*path, str(i)), v) for i, v in reversed(list(enumerate(node))))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve_local(root: Any, ref: str) -> Any:
    node = root
    for part in ref[2:].split("/"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _properties_of_all_of(root: dict, node: dict) -> int:
    """Properties the converter merges into one object from an allOf."""
    n = 0
    for comp in node.get("allOf") or ():
        if not isinstance(comp, dict):
            continue
        parts = comp.get("anyOf") if isinstance(comp.get("anyOf"), list) else [comp]
        for part in parts:
            if isinstance(part, dict) and isinstance(part.get("$ref"), str) and part["$ref"].startswith("#/"):
                part = _resolve_local(root, part["$ref"])
            if isinstance(part, dict) and isinstance(part.get("properties"), dict):
                n += len(part["properties"])
    return n


def check_json_schema(schema: Any) -> None:
    """Raises GrammarTooLarge if ``schema`` (a parsed JSON schema) asks the
    converter or llama.cpp for more than this module's limits.

    Keywords are checked wherever they appear in the document (a ``$ref``
    may point anywhere in it), except for the keys of name maps such as
    ``properties``, which are names.
    """
    total_repetition = 0
    total_properties = 0
    ambiguity = 0
    name_maps: set[tuple[str, ...]] = set()
    for path, node in _walk(schema):
        if isinstance(node, dict) and path in name_maps:
            for name in node:
                if len(str(name)) > MAX_NAME_LENGTH:
                    raise GrammarTooLarge(f"a name of {len(str(name))} characters exceeds the limit of "
                                          f"{MAX_NAME_LENGTH} (at {_pointer(path)})")
            if path[-1] == "properties":
                total_properties += len(node)
                if len(node) > MAX_OBJECT_PROPERTIES:
                    raise GrammarTooLarge(f"{len(node)} properties in one object exceed the limit of "
                                          f"{MAX_OBJECT_PROPERTIES} (at {_pointer(path)})")
            continue  # its keys are names, its values schemas (walked on their own)
        if not isinstance(node, dict):
            continue
        where = _pointer(path)
        for key in _NAME_MAPS:
            if isinstance(node.get(key), dict):
                name_maps.add((*path, key))
        for key in _COUNT_KEYWORDS:
            value = node.get(key)
            if isinstance(value, (bool, float)):
                raise GrammarTooLarge(f"{key} must be an integer, got {json.dumps(value)} (at {where})")
            if _is_count(value):
                if not 0 <= value <= MAX_REPETITION:
                    raise GrammarTooLarge(f"{key} {value} exceeds the limit of {MAX_REPETITION} (at {where})"
                                          if value > 0 else f"{key} {value} must be >= 0 (at {where})")
        counts = [node.get(k) for k in _COUNT_KEYWORDS]
        total_repetition += max((c for c in counts if _is_count(c)), default=0)
        for key, limit in _LISTS.items():
            value = node.get(key)
            if isinstance(value, list) and len(value) > limit:
                raise GrammarTooLarge(f"{key} of {len(value)} entries exceeds the limit of {limit} (at {where})")
        if isinstance(node.get("allOf"), list):
            merged = _properties_of_all_of(schema, node)
            if merged > MAX_OBJECT_PROPERTIES:
                raise GrammarTooLarge(f"allOf merges {merged} properties into one object, over the limit of "
                                      f"{MAX_OBJECT_PROPERTIES} (at {where})")
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
            raise GrammarTooLarge(f"$ref {str(ref)[:80]!r}: only local references ('#/...') are supported (at {where})")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            stats = _check_pattern(pattern, f"pattern at {where}")
            total_repetition += stats.repetition
            ambiguity += stats.ambiguity
    if total_repetition > MAX_TOTAL_REPETITION:
        raise GrammarTooLarge(f"the schema's repetition counts add up to {total_repetition}, over the limit of "
                              f"{MAX_TOTAL_REPETITION}")
    if total_properties > MAX_TOTAL_PROPERTIES:
        raise GrammarTooLarge(f"the schema has {total_properties} properties, over the limit of {MAX_TOTAL_PROPERTIES}")
    if ambiguity > MAX_PATTERN_AMBIGUITY:
        raise GrammarTooLarge(f"the patterns' counted ranges that can match the same text add up to {ambiguity} "
                              f"alternatives, over the limit of {MAX_PATTERN_AMBIGUITY}")
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_SCHEMA_BYTES:
        raise GrammarTooLarge(f"the schema is {size} bytes as JSON, over the limit of {MAX_SCHEMA_BYTES}")


# -- patterns -----------------------------------------------------------------

class _PatternStats:
    def __init__(self) -> None:
        self.repetition = 0  # the counts, as the converter writes them out
        self.widths: list[int] = []  # each counted range's width times the copies it is written in
        self.ambiguity = 0


class _Node:
    """A parsed piece of a pattern: can it match the empty string?"""
    __slots__ = ("nullable",)

    def __init__(self, nullable: bool) -> None:
        self.nullable = nullable


def _check_pattern(pattern: str, where: str) -> _PatternStats:
    """Parses the regex subset the converter translates (it refuses the rest
    itself) far enough to bound its quantifiers."""
    stats = _PatternStats()
    body = pattern[1:] if pattern.startswith("^") else pattern
    body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
    n = len(body)
    i = 0

    def fail(message: str) -> GrammarTooLarge:
        return GrammarTooLarge(f"{where}: {message}")

    def number(text: str) -> int | None:
        text = text.strip()
        if not text:
            return None
        if not text.isdigit():
            raise fail(f"invalid quantifier {{{text}}}")
        if len(text) > 6 or int(text) > MAX_REPETITION:
            raise fail(f"repetition count {text[:12]} exceeds the limit of {MAX_REPETITION}")
        return int(text)

    def alternation(depth: int, copies: int, ranges: int) -> _Node:
        """``ranges``: product of the widths of the enclosing counted ranges (1: none)."""
        nonlocal i
        if depth > MAX_PATTERN_NESTING:
            raise fail(f"groups nest deeper than {MAX_PATTERN_NESTING} levels")
        nullable = False
        while True:
            nullable |= sequence(depth, copies, ranges).nullable
            if i < n and body[i] == "|":
                i += 1
                continue
            return _Node(nullable)

    def sequence(depth: int, copies: int, ranges: int) -> _Node:
        nonlocal i
        nullable = True
        while i < n and body[i] not in "|)":
            start = i
            item = atom(depth, copies, ranges)
            # a quantifier applies to the item just read
            while i < n and body[i] in "*+?{":
                if body[i] == "{":
                    close = body.find("}", i)
                    if close < 0:
                        raise fail("unbalanced {")
                    parts = body[i + 1:close].split(",")
                    if len(parts) > 2:
                        raise fail(f"invalid quantifier {body[i:close + 1]}")
                    lo = number(parts[0]) or 0
                    hi = number(parts[1]) if len(parts) == 2 else lo
                    i = close + 1
                    if hi is not None and hi < lo:
                        raise fail(f"quantifier {{{lo},{hi}}}: the minimum is over the maximum")
                    width = 1 if hi is None else hi - lo
                    stats.repetition += max(lo, hi or 0)
                else:
                    lo, width = (1 if body[i] == "+" else 0), 1
                    i += 1
                if item.nullable:
                    raise fail(f"a quantifier applies to {body[start:i]!r}, which can match the empty string "
                               "(llama.cpp's grammar sampler slows down without bound on it)")
                if width > 0:
                    if ranges > 1 and ranges * width > MAX_NESTED_RANGE_PRODUCT:
                        raise fail(f"counted ranges nested in counted ranges multiply to {ranges * width} "
                                   f"alternatives, over the limit of {MAX_NESTED_RANGE_PRODUCT}")
                    stats.widths.append(width * copies)
                item = _Node(lo == 0)
            nullable &= item.nullable
        return _Node(nullable)

    def atom(depth: int, copies: int, ranges: int) -> _Node:
        nonlocal i
        c = body[i]
        if c == "(":
            i += 1
            # the quantifier after the group is not read yet: look ahead for it
            close = _matching_paren(body, i - 1)
            inner_copies, inner_ranges = copies, ranges
            if close is not None and close + 1 < n and body[close + 1] in "*+?{":
                lo, hi = _peek_quantifier(body, close + 1)
                width = 1 if hi is None else hi - lo
                inner_copies = copies * max(hi or lo, 1)
                inner_ranges = ranges * width if width > 0 else ranges
            node = alternation(depth + 1, inner_copies, inner_ranges)
            if i >= n or body[i] != ")":
                raise fail("unbalanced (")
            i += 1
            return node
        if c == "[":
            i += 1
            while i < n and body[i] != "]":
                i += 2 if body[i] == "\\" else 1
            if i >= n:
                raise fail("unbalanced [")
            i += 1
            return _Node(False)
        if c == "\\":
            i += 2
            return _Node(False)
        if c in "*+?{":
            raise fail(f"nothing to repeat at {c!r}")
        i += 1
        return _Node(False)

    alternation(0, 1, 1)
    if i != n:
        raise fail("unbalanced )")
    if stats.widths:
        stats.ambiguity = sum(stats.widths) - max(stats.widths)
        if stats.ambiguity > MAX_PATTERN_AMBIGUITY:
            raise fail(f"its counted ranges that can match the same text add up to {stats.ambiguity} alternatives, "
                       f"over the limit of {MAX_PATTERN_AMBIGUITY}")
    return stats


def _matching_paren(text: str, open_at: int) -> int | None:
    depth, j, n = 0, open_at, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "[":
            j += 1
            while j < n and text[j] != "]":
                j += 2 if text[j] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return None


def _peek_quantifier(text: str, at: int) -> tuple[int, int | None]:
    """(min, max) of the quantifier at ``at`` (max None: unbounded); counts
    beyond the limit are reported when the quantifier itself is read."""
    c = text[at]
    if c in "*+?":
        return (1 if c == "+" else 0), (1 if c == "?" else None)
    close = text.find("}", at)
    parts = text[at + 1:close].split(",") if close > 0 else ["0"]
    try:
        lo = min(int(parts[0].strip() or 0), MAX_REPETITION)
        hi = lo if len(parts) == 1 else (min(int(parts[1]), MAX_REPETITION) if parts[1].strip() else None)
    except ValueError:
        return 0, 0
    return lo, hi


# -- GBNF ---------------------------------------------------------------------

def check_gbnf(text: str) -> None:
    """Raises GrammarTooLarge if GBNF ``text`` is beyond this module's limits:
    its size, the nesting of its groups, the rules llama.cpp's parser would
    create, and any {m,n} count. A scan, not a parse: llama.cpp reports
    syntax errors itself."""
    size = len(text.encode())
    if size > MAX_GBNF_BYTES:
        raise GrammarTooLarge(f"the grammar is {size} bytes of GBNF, over the limit of {MAX_GBNF_BYTES}")
    depth = max_depth = rules = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "[":
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
            continue
        elif c == ":" and text.startswith("::=", i):
            rules += 1
            i += 2
        elif c == "(":
            depth += 1
            rules += 1
            if depth > max_depth:
                max_depth = depth
                if max_depth > MAX_GBNF_NESTING:
                    raise GrammarTooLarge(f"the grammar's groups nest deeper than {MAX_GBNF_NESTING} levels")
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c in "?*+":
            rules += 1
        elif c == "{":
            close = text.find("}", i)
            if close < 0:
                break  # llama.cpp refuses it
            parts = [p.strip() for p in text[i + 1:close].split(",")]
            try:
                counts = [int(p) if p else None for p in parts]
            except ValueError:
                counts = []
            if any(count is not None and count > MAX_REPETITION for count in counts):
                raise GrammarTooLarge(f"repetition {text[i:close + 1][:40]} in the grammar exceeds the limit of "
                                      f"{MAX_REPETITION}")
            lo = counts[0] if counts and counts[0] is not None else 0
            hi = counts[-1] if len(counts) == 2 else lo
            rules += 1 if hi is None else max(hi - lo, 0)
            i = close
        i += 1
    if rules > MAX_GBNF_RULES:
        raise GrammarTooLarge(f"the grammar makes about {rules} rules, over the limit of {MAX_GBNF_RULES}")
