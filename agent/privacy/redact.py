"""Personal data in free text: detectors, Presidio's operators, and a fixed-point guarantee.

Detectors (entity types as Presidio names them, plus two of ours):

    EMAIL_ADDRESS   local@domain.tld (Unicode letters allowed)
    PHONE_NUMBER    +CC / 00CC international, national with a trunk 0, North American (NXX) NXX-XXXX
    IP_ADDRESS      IPv4, IPv6 (full, compressed, IPv4-embedded), validated with the ipaddress module
    MAC_ADDRESS     aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff (Cisco)
    PERSON          names from a configured list: case-insensitive, whole words, Unicode
    GEO_COORDINATE  a decimal "lat, lon" pair with 4+ decimals (ours: released text holds no exact position)
    + terms         exact identifiers known to the caller (operator badges, the device id), e.g. OPERATOR_ID

Detection runs on a folded copy of the text: each character NFKC-normalized and case-folded,
format characters (soft hyphen, zero-width joiners) removed, so "ＡＬＩＣＥ", "a\u00adlice" and
"ALİCE"-style spellings are found; spans are mapped back to the (NFC-normalized) text. Detectors
favour recall: an entity glued to other text is still found where that is unambiguous.

Overlaps: the longest match wins (ties: the order of ENTITIES, terms first), except that a phone
number, the loosest pattern, yields to any other entity it overlaps. Operators, as in
Presidio: replace (default "<ENTITY_TYPE>"), redact (remove), mask (masking_char, chars_to_mask,
from_end), hash (the injected pseudonymizer; rendered "ps_" + 32 hex), keep.

Fixed point: after redaction, ``detect`` on the output finds nothing. Removal or masking can make
a new match (two halves of a name joined), so redaction repeats until nothing is found; after
MAX_PASSES the remaining matches get the default token, and as a last resort the whole text
becomes "<REDACTED>". Our own tokens are protected: a match lying wholly inside one (digits inside
a pseudonym's hex) is not a match.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

ENTITIES = ("EMAIL_ADDRESS", "IP_ADDRESS", "MAC_ADDRESS", "PHONE_NUMBER", "GEO_COORDINATE", "PERSON")
OPERATOR_TYPES = ("replace", "redact", "mask", "hash", "keep")
PSEUDONYM_PREFIX = "ps_"
FALLBACK_TOKEN = "<REDACTED>"
MAX_PASSES = 4
#: Terms (identifiers) shorter than this are not searched for in text: too many false matches.
MIN_TERM_LEN = 3
#: A name part shorter than this is not matched on its own (name_parts).
MIN_NAME_PART = 3

_TOKEN_ENTITY = r"[A-Z][A-Z0-9_]*"
_PSEUDONYM_RE = re.compile(re.escape(PSEUDONYM_PREFIX) + r"[0-9a-f]{32}")


def render_pseudonym(mac: bytes) -> str:
    """How a pseudonym is written in released data: the prefix and the first 16 bytes in hex."""
    return PSEUDONYM_PREFIX + mac[:16].hex()


@dataclass(frozen=True)
class Operator:
    """What happens to a detected entity (Presidio's operator names and parameters)."""

    type: str = "replace"
    new_value: str | None = None     # replace: the replacement (default "<ENTITY_TYPE>")
    masking_char: str = "*"          # mask: one character, not a letter or digit
    chars_to_mask: int = 1 << 30     # mask: how many characters (default: all)
    from_end: bool = False           # mask: mask the last characters instead of the first

    def __post_init__(self) -> None:
        if self.type not in OPERATOR_TYPES:
            raise ValueError(f"operator type {self.type!r} is not one of {', '.join(OPERATOR_TYPES)}")
        if len(self.masking_char) != 1 or self.masking_char.isalnum():
            # A letter or digit as mask could rebuild what was masked (a phone number of zeros).
            raise ValueError(f"masking_char must be one character that is not a letter or digit, "
                             f"got {self.masking_char!r}")
        if self.chars_to_mask < 1:
            raise ValueError(f"chars_to_mask must be >= 1, got {self.chars_to_mask}")


@dataclass(frozen=True)
class Match:
    entity: str
    start: int      # span in the NFC-normalized text
    end: int
    key: str        # the normalized value (what `hash` pseudonymizes): same entity, same key


@dataclass
class RedactResult:
    text: str
    counts: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    fallback: bool = False   # the configured operators did not reach a fixed point; tokens did


# -- folding: compare what a reader would read as equal -------------------------------------------

def fold(text: str) -> tuple[str, list[int] | None]:
    """(folded text, original index of each folded character); None means the identity map."""
    if text.isascii():
        return text.lower(), None
    out: list[str] = []
    idx: list[int] = []
    for i, ch in enumerate(text):
        if ch == "\u200b":
            f = " "  # a zero-width space separates words
        elif unicodedata.category(ch) == "Cf":
            continue
        else:
            f = unicodedata.normalize("NFKC", ch).casefold()
        out.append(f)
        idx.extend([i] * len(f))
    return "".join(out), idx


# -- detectors: each yields (start, end, key) in folded coordinates -------------------------------

_EMAIL = re.compile(r"[\w.%+\-]+@(?:[\w\-]+\.)+[^\W\d_]{2,}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_HEXRUN = re.compile(r"[0-9a-f:.]*:[0-9a-f:.]*:[0-9a-f:.]*")
_MAC = re.compile(r"[0-9a-f]{2}([:\-])(?:[0-9a-f]{2}\1){4}[0-9a-f]{2}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}")
_COORD = re.compile(r"[-+]?[0-9]{1,3}\.[0-9]{4,}\s*[,;/ ]\s*[-+]?[0-9]{1,3}\.[0-9]{4,}")
# Whole words only: digit runs inside hex strings (digests, addresses, pseudonyms) are not phones.
_PHONE_RUN = re.compile(r"(?<![\w+])\+?\(?[0-9]+\)?(?:(?:[ \t]?[./\-][ \t]?|[ \t])?\(?[0-9]+\)?)*(?!\w)")
_PHONE_GROUP = re.compile(r"\+?\(?([0-9]+)\)?")
_MAX_PHONE_GROUPS = 10


def _emails(s: str) -> Iterator[tuple[int, int, str]]:
    for m in _EMAIL.finditer(s):
        yield m.start(), m.end(), m.group()


def _ipv4(s: str) -> Iterator[tuple[int, int, str]]:
    for m in _IPV4.finditer(s):
        yield m.start(), m.end(), str(ipaddress.IPv4Address(m.group()))


def _ipv6_ok(c: str) -> bool:
    if c.count(":") < 2 or ":::" in c or c.count("::") > 1 or not any(ch not in ":." for ch in c):
        return False
    if (c[0] == ":" and not c.startswith("::")) or (c[-1] == ":" and not c.endswith("::")):
        return False
    try:
        ipaddress.IPv6Address(c)
    except ValueError:
        return False
    return True


def _ipv6(s: str) -> Iterator[tuple[int, int, str]]:
    """Leftmost-longest valid IPv6 address inside each run of hex digits, colons and dots."""
    for m in _HEXRUN.finditer(s):
        run, base, i = m.group(), m.start(), 0
        while i < len(run) - 1:
            for j in range(min(len(run), i + 45), i + 1, -1):  # 45: the longest textual IPv6
                if _ipv6_ok(run[i:j]):
                    yield base + i, base + j, str(ipaddress.IPv6Address(run[i:j]))
                    i = j
                    break
            else:
                i += 1


def _macs(s: str) -> Iterator[tuple[int, int, str]]:
    for m in _MAC.finditer(s):
        h = re.sub(r"[^0-9a-f]", "", m.group())
        yield m.start(), m.end(), ":".join(h[k:k + 2] for k in range(0, 12, 2))


def _coords(s: str) -> Iterator[tuple[int, int, str]]:
    for m in _COORD.finditer(s):
        yield m.start(), m.end(), re.sub(r"\s+", "", m.group())


def _phone_key(groups: list[tuple[int, int, str, str]], seps: list[str]) -> str | None:
    """The phone number's key if these groups (joined by ``seps``) form one, else None."""
    if sum("." in sep for sep in seps) == 1:
        return None  # one dot: a decimal number ("0.0219726", "0.5 044 ..."); dotted phones have several
    first = groups[0][3]
    digits = "".join(g[2] for g in groups)
    if first.startswith("+"):
        return "+" + digits if 8 <= len(digits) <= 15 else None
    if digits.startswith("00") and not first.startswith("("):
        return "+" + digits[2:] if 8 <= len(digits) - 2 <= 15 else None
    if digits.startswith("0"):
        return digits if 9 <= len(digits) <= 12 else None
    lens = tuple(len(g[2]) for g in groups)
    if lens == (1, 3, 3, 4) and digits[0] == "1" and digits[1] in "23456789":
        return "+" + digits
    if lens == (3, 3, 4) and digits[0] in "23456789":
        return "+1" + digits
    return None


def _phones(s: str) -> Iterator[tuple[int, int, str]]:
    """Phone-like runs of digit groups, cut into the phone numbers that cover the most digits."""
    for m in _PHONE_RUN.finditer(s):
        groups = [(m.start() + g.start(), m.start() + g.end(), g.group(1), g.group())
                  for g in _PHONE_GROUP.finditer(m.group())]
        n = len(groups)
        # A dot directly between digits binds them (a decimal number, an IP address, a dotted phone
        # format): a phone neither begins nor ends inside such a pair ("0.0219726", "67.1.2.3.4").
        cut = [True] + [s[groups[k - 1][1]:groups[k][0]] != "." for k in range(1, n)] + [True]
        # best[i]: (digits covered, -phones) from group i on, and the cut that achieves it.
        best: list[tuple[tuple[int, int], int, str | None]] = [((0, 0), n, None)] * (n + 1)
        for i in range(n - 1, -1, -1):
            best[i] = (best[i + 1][0], i + 1, None)
            for j in range(i + 1, min(n, i + _MAX_PHONE_GROUPS) + 1) if cut[i] else ():
                if not cut[j]:
                    continue
                key = _phone_key(groups[i:j], [s[groups[k - 1][1]:groups[k][0]] for k in range(i + 1, j)])
                if key is not None:
                    cov = sum(len(g[2]) for g in groups[i:j])
                    score = (cov + best[j][0][0], best[j][0][1] - 1)
                    if score > best[i][0]:
                        best[i] = (score, j, key)
        i = 0
        while i < n:
            _, j, key = best[i]
            if key is not None:
                yield groups[i][0], groups[j - 1][1], key
            i = j


def _word_list_regex(words: Iterable[str], boundary: str) -> re.Pattern | None:
    """One regex for a list of folded words/phrases; inner whitespace matches any whitespace run."""
    alts = sorted({w for w in words if w}, key=len, reverse=True)
    if not alts:
        return None
    body = "|".join(r"\s+".join(re.escape(p) for p in w.split()) for w in alts)
    return re.compile(rf"(?<!{boundary})(?:{body})(?!{boundary})")


_LETTER = r"[^\W\d_]"
_ALNUM = r"[^\W_]"


class Redactor:
    """Finds and replaces personal data in free text. Build once per policy and batch; not thread-safe."""

    def __init__(self, names: Iterable[str] = (), *, name_parts: bool = False,
                 terms: Mapping[str, Iterable[str]] | None = None,
                 operators: Mapping[str, Operator] | None = None,
                 hasher: Callable[[str, str], str] | None = None) -> None:
        """names: PERSON names; name_parts: also each part of a name (>= MIN_NAME_PART letters);
        terms: entity type -> exact identifiers (keys for `hash` are the identifiers as given);
        operators: entity type -> Operator (default replace); hasher(entity, key) -> token, for hash.
        Raises ValueError on an unusable configuration."""
        self.operators = dict(operators or {})
        self.hasher = hasher
        folded_names = []
        for n in names:
            f = " ".join(fold(n)[0].split())
            if not re.search(_LETTER, f):
                raise ValueError(f"name {n!r} has no letter")
            folded_names.append(f)
            if name_parts:
                folded_names += [p for p in re.split(r"[\s\-]+", f) if len(p) >= MIN_NAME_PART]
        self._names = _word_list_regex(folded_names, _LETTER)
        self._terms: list[tuple[str, re.Pattern, dict[str, str]]] = []
        for entity, values in (terms or {}).items():
            if not re.fullmatch(_TOKEN_ENTITY, entity):
                raise ValueError(f"term entity {entity!r} must be upper case letters, digits and _")
            original = {" ".join(fold(v)[0].split()): v for v in values if isinstance(v, str)}
            original = {k: v for k, v in original.items() if len(k) >= MIN_TERM_LEN}
            rx = _word_list_regex(original, _ALNUM)
            if rx is not None:
                self._terms.append((entity, rx, original))
        self.entities = tuple(e for e, _, _ in self._terms) + ENTITIES
        for entity, op in self.operators.items():
            if op.type == "hash" and hasher is None:
                raise ValueError(f"operator hash for {entity} needs a pseudonymizer")
        custom = [re.escape(op.new_value) for op in self.operators.values()
                  if op.type == "replace" and op.new_value]
        tokens = "|".join(re.escape(e) for e in self.entities + ("REDACTED",))
        self._protected = re.compile("|".join([rf"<(?:{tokens})>", _PSEUDONYM_RE.pattern] + custom))
        for entity, op in self.operators.items():
            if op.type == "replace" and op.new_value is not None and self._resolve(op.new_value, protect=False):
                raise ValueError(f"replacement {op.new_value!r} for {entity} is itself detected as personal data")

    def operator(self, entity: str) -> Operator:
        return self.operators.get(entity, _DEFAULT)

    # -- detection -------------------------------------------------------------------------------

    def _candidates(self, folded: str) -> Iterator[tuple[int, int, str, str]]:
        for entity, rx, original in self._terms:
            for m in rx.finditer(folded):
                yield m.start(), m.end(), entity, original[" ".join(m.group().split())]
        for entity, finder in _FINDERS:
            for s, e, key in finder(folded):
                yield s, e, entity, key
        if self._names is not None:
            for m in self._names.finditer(folded):
                yield m.start(), m.end(), "PERSON", " ".join(m.group().split())

    def _resolve(self, text: str, protect: bool = True) -> list[Match]:
        """Every entity found in NFC ``text``, overlaps resolved (longest wins), in text order."""
        folded, idx = fold(text)
        protected = [m.span() for m in self._protected.finditer(text)] if protect else []
        rank = {e: i for i, e in enumerate(self.entities)}
        cands = []
        for fs, fe, entity, key in self._candidates(folded):
            s, e = (fs, fe) if idx is None else (idx[fs], idx[fe - 1] + 1)
            if any(ps <= s and e <= pe for ps, pe in protected):
                continue  # inside one of our own tokens
            cands.append((s, e, entity, key))
        # Longest wins; but a phone number, the loosest pattern, yields to any other entity it
        # overlaps ("+41 44 123 45 67 47.37726, 8.54200": not a phone ending in 47), and is found
        # again in what remains on the next pass.
        cands.sort(key=lambda c: (c[2] == "PHONE_NUMBER", c[0] - c[1], rank[c[2]], c[0]))
        taken: list[Match] = []
        for s, e, entity, key in cands:
            if all(e <= t.start or s >= t.end for t in taken):
                taken.append(Match(entity, s, e, key))
        return sorted(taken, key=lambda m: m.start)

    def detect(self, text: str) -> list[Match]:
        """The entities ``redact`` would change (all but those whose operator is keep), with spans
        in unicodedata.normalize("NFC", text)."""
        text = unicodedata.normalize("NFC", text)
        return [m for m in self._resolve(text) if self.operator(m.entity).type != "keep"]

    # -- redaction -------------------------------------------------------------------------------

    def _render(self, text: str, m: Match, token_only: bool) -> str:
        op = _DEFAULT if token_only else self.operator(m.entity)
        value = text[m.start:m.end]
        if op.type == "replace":
            return op.new_value if op.new_value is not None else f"<{m.entity}>"
        if op.type == "redact":
            return ""
        if op.type == "mask":
            k = min(op.chars_to_mask, len(value))
            return (value[:len(value) - k] + op.masking_char * k if op.from_end
                    else op.masking_char * k + value[k:])
        if op.type == "hash":
            assert self.hasher is not None
            return self.hasher(m.entity, m.key)
        return value

    def _apply(self, text: str, matches: list[Match], counts: dict[str, int], token_only: bool) -> str:
        parts, pos = [], 0
        for m in matches:
            parts += [text[pos:m.start], self._render(text, m, token_only)]
            pos = m.end
            counts[m.entity] = counts.get(m.entity, 0) + 1
        parts.append(text[pos:])
        return unicodedata.normalize("NFC", "".join(parts))

    def redact(self, text: str) -> RedactResult:
        """Redact until ``detect`` finds nothing (see the module docstring). The result is NFC."""
        out = RedactResult(unicodedata.normalize("NFC", text))
        for token_only in (False, True):
            for _ in range(MAX_PASSES):
                matches = self.detect(out.text)
                if not matches:
                    return out
                out.text = self._apply(out.text, matches, out.counts, token_only)
                out.passes += 1
            out.fallback = True
        if self.detect(out.text):
            out.text = FALLBACK_TOKEN
        return out


_DEFAULT = Operator()
_FINDERS: tuple[tuple[str, Callable[[str], Iterator[tuple[int, int, str]]]], ...] = (
    ("EMAIL_ADDRESS", _emails), ("IP_ADDRESS", _ipv4), ("IP_ADDRESS", _ipv6), ("MAC_ADDRESS", _macs),
    ("PHONE_NUMBER", _phones), ("GEO_COORDINATE", _coords))
