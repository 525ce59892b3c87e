"""The governance policy: rules run on each user message before the model sees it, and the verdict they give.

Pure: no I/O, no HTTP errors. Findings name the rule and where it matched, never the matched text (which may be
a secret). `transparent` mode flags and never blocks; `enforcing` denies a message with any finding.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

TRANSPARENT = "transparent"
ENFORCING = "enforcing"
MODES = frozenset({TRANSPARENT, ENFORCING})
ALLOW, FLAG, DENY = "allow", "flag", "deny"

# Bounded quantifiers throughout: a hostile message must not make a rule backtrack for long.
SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an API key (sk-...)", re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{20,200}")),
    ("a gateway credential", re.compile(r"(?<![A-Za-z0-9])(?:gw|ak)_[A-Za-z0-9_-]{30,200}")),
    ("an AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])")),
    (
        "a GitHub token",
        re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_\w{22,255})"),
    ),
    ("a Slack token", re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,200}")),
    ("a Google API key", re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}")),
    ("a Stripe key", re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,200}")),
    ("a private key", re.compile(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----")),
    ("a JSON Web Token", re.compile(r"(?<![\w-])eyJ[\w-]{10,4000}\.eyJ[\w-]{10,8000}\.[\w-]{10,1000}")),
)
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}"
    r"[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
# Runs of digit groups split by single spaces or hyphens; card numbers (13 to 19 digits, Luhn-valid) are
# looked for among each run's consecutive groups, so a number followed by more digits ("... 1111 123") is found.
DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,}(?!\d)")
DIGIT_GROUP = re.compile(r"\d+")
CARD_DIGITS = range(13, 20)


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that matched: which, in what category, what it means, and where (character offsets)."""

    rule: str
    category: str  # "policy", "secret" or "pii"
    message: str
    start: int | None = None
    end: int | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "category": self.category,
            "message": self.message,
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's decision on one message, in one mode."""

    mode: str
    decision: str
    findings: tuple[Finding, ...]

    @property
    def blocks(self) -> bool:
        """Whether the model must not be called."""
        return self.decision == DENY


def luhn_valid(digits: str) -> bool:
    """Whether a string of decimal digits passes the Luhn check (the card number checksum)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def decide(mode: str, findings: Sequence[Finding]) -> Verdict:
    """The verdict for `findings` under `mode` (one of `MODES`; raises ValueError otherwise)."""
    if mode not in MODES:
        raise ValueError(f"unknown governance mode {mode!r}")
    if not findings:
        return Verdict(mode, ALLOW, ())
    decision = DENY if mode == ENFORCING else FLAG
    return Verdict(mode, decision, tuple(findings))


class GovernancePolicy:
    """The rule set: a length limit, the operator's blocked patterns, secrets and personal data."""

    def __init__(self, *, max_chars: int, blocked_patterns: Sequence[str] = ()) -> None:
        if max_chars <= 0:
            raise ValueError("max_chars must be above 0")
        self.max_chars = max_chars
        self.blocked = tuple(re.compile(pattern) for pattern in blocked_patterns)

    def evaluate(self, text: str, *, mode: str) -> Verdict:
        """Run every rule on `text` and decide under `mode`."""
        return decide(mode, list(self.findings(text)))

    def findings(self, text: str) -> Iterator[Finding]:
        """Every finding, rule by rule, each rule's in order of position."""
        if len(text) > self.max_chars:
            yield Finding(
                "max_length",
                "policy",
                f"The message has {len(text)} characters; the limit is {self.max_chars}.",
            )
        for index, pattern in enumerate(self.blocked):
            match = pattern.search(text)
            if match is not None:
                yield Finding(
                    "blocked_pattern",
                    "policy",
                    f"The message matches blocked pattern #{index + 1}.",
                    match.start(),
                    match.end(),
                )
        for description, pattern in SECRET_PATTERNS:
            for match in pattern.finditer(text):
                yield Finding(
                    "secret", "secret", f"The message contains {description}.", match.start(), match.end()
                )
        for match in EMAIL.finditer(text):
            yield Finding("email_address", "pii", "The message contains an e-mail address.", *match.span())
        for start, end in card_number_spans(text):
            yield Finding("card_number", "pii", "The message contains a payment card number.", start, end)


def card_number_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where `text` holds card numbers: consecutive digit groups of 13 to 19 digits in all that pass Luhn,
    leftmost first, not overlapping. Linear in the text: each start extends over at most 19 digits, and the
    Luhn sum is kept for both parities as it grows."""
    for run in DIGIT_RUN.finditer(text):
        groups = [(group.start() + run.start(), group.group()) for group in DIGIT_GROUP.finditer(run.group())]
        first = 0
        while first < len(groups):
            plain, doubled, length = [0, 0], [0, 0], 0
            for last in range(first, len(groups)):
                for char in groups[last][1]:
                    value = ord(char) - 48
                    plain[length % 2] += value
                    doubled[length % 2] += value * 2 - 9 if value > 4 else value * 2
                    length += 1
                if length >= CARD_DIGITS.stop:
                    break
                # From the right, every second digit is doubled: those at the index parity of length % 2.
                if length in CARD_DIGITS and (doubled[length % 2] + plain[1 - length % 2]) % 10 == 0:
                    yield groups[first][0], groups[last][0] + len(groups[last][1])
                    first = last
                    break
            first += 1
