"""Text normalisation before synthesis, as upstream CosyVoice's frontend does it with wetext.

Upstream (``CosyVoiceFrontEnd.text_normalize``) skips everything when the text carries ``<|`` and
``|>`` (e.g. ``<|endofprompt|>``). Otherwise Chinese text (any CJK ideograph) goes through the wetext
zh normaliser (erhua kept) and some punctuation clean-up; other text through the wetext en normaliser
and then digit runs are spelled out in English words. Sentence splitting (``split_paragraph``) is a
separate step, applied only when asked: zh lengths count characters, en lengths count tokens.
Training transcripts are NOT normalised by upstream; this is for synthesis input.

wetext ships its FSTs inside the wheel, so it works offline.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import regex

_CJK = re.compile(r"[\u4e00-\u9fff]+")
_ONLY_PUNCTUATION = regex.compile(r"^[\p{P}\p{S}]*$")
_TRAILING_COMMAS = re.compile(r"[，,、]+$")
ZH_STOPS = ("。", "？", "！", "；", "：", "、", ".", "?", "!", ";")
EN_STOPS = (".", "?", "!", ";", ":")
CLOSING_QUOTES = ('"', "”")

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = (
    "",
    "thousand",
    "million",
    "billion",
    "trillion",
    "quadrillion",
    "quintillion",
    "sextillion",
    "septillion",
    "octillion",
    "nonillion",
    "decillion",
)


def contains_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def is_only_punctuation(text: str) -> bool:
    """True for an empty string or one made only of punctuation and symbols."""
    return bool(_ONLY_PUNCTUATION.fullmatch(text))


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if rest < 20:
        tail = _ONES[rest] if rest else ""
    else:
        tens, ones = divmod(rest, 10)
        tail = _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if hundreds and tail:
        return f"{_ONES[hundreds]} hundred and {tail}"
    return f"{_ONES[hundreds]} hundred" if hundreds else tail


def number_to_words(digits: str) -> str:
    """English words for a run of digits, in the style upstream gets from ``inflect``.

    "1234" -> "one thousand, two hundred and thirty-four"; "1001" -> "one thousand and one";
    leading zeros are ignored ("007" -> "seven"). Numbers past the decillions are read digit by digit.
    """
    value = int(digits)
    if value == 0:
        return "zero"
    groups: list[int] = []
    while value:
        value, group = divmod(value, 1000)
        groups.append(group)
    if len(groups) > len(_SCALES):
        return " ".join(_ONES[int(d)] for d in digits)
    parts = [(i, _below_thousand(g) + (f" {_SCALES[i]}" if _SCALES[i] else "")) for i, g in enumerate(groups) if g][
        ::-1
    ]
    text = parts[0][1]
    for i, words in parts[1:]:
        joiner = " and " if i == 0 and groups[0] < 100 else ", "
        text += joiner + words
    return text


def spell_out_numbers(text: str) -> str:
    """Replace every run of digits with English words."""
    return re.sub(r"\d+", lambda m: number_to_words(m.group(0)), text)


def _drop_spaces_between_non_ascii(text: str) -> str:
    """Keep a space only when both neighbours are non-space ASCII characters."""
    out = []
    for i, c in enumerate(text):
        if c == " ":
            before = text[i - 1] if i > 0 else text[-1]
            after = text[i + 1] if i + 1 < len(text) else ""
            if not (after.isascii() and after not in ("", " ") and before.isascii() and before != " "):
                continue
        out.append(c)
    return "".join(out)


def _clean_chinese(text: str) -> str:
    text = text.replace("\n", "")
    text = _drop_spaces_between_non_ascii(text)
    text = text.replace("²", "平方").replace("³", "立方")
    text = text.replace(".", "。").replace(" - ", "，")
    for mark in ("（", "）", "【", "】", "`"):
        text = text.replace(mark, "")
    text = text.replace("——", " ")
    return _TRAILING_COMMAS.sub("。", text)


def split_paragraph(
    text: str,
    tokenize: Callable[[str], list[int]],
    lang: str = "zh",
    max_len: int = 80,
    min_len: int = 60,
    merge_len: int = 20,
    comma_split: bool = False,
) -> list[str]:
    """Split ``text`` into sentences, then greedily merge them into segments of about ``max_len``.

    A segment is closed when adding the next sentence would pass ``max_len`` and it already exceeds
    ``min_len``; a last segment shorter than ``merge_len`` joins the previous one. Lengths are
    characters for zh and ``len(tokenize(s))`` for en. A closing quote stays with its sentence.
    """
    if not text:
        return []

    def length(s: str) -> int:
        return len(s) if lang == "zh" else len(tokenize(s))

    stops = list(ZH_STOPS if lang == "zh" else EN_STOPS)
    if comma_split:
        stops += ["，", ","]
    if text[-1] not in stops:
        text += "。" if lang == "zh" else "."

    sentences: list[str] = []
    start = 0
    for i, c in enumerate(text):
        if c not in stops:
            continue
        if i > start:
            sentences.append(text[start:i] + c)
        if i + 1 < len(text) and text[i + 1] in CLOSING_QUOTES:
            if sentences:
                sentences[-1] += text[i + 1]
            start = i + 2
        else:
            start = i + 1

    segments: list[str] = []
    current = ""
    for sentence in sentences:
        if length(current + sentence) > max_len and length(current) > min_len:
            segments.append(current)
            current = ""
        current += sentence
    if current:
        if segments and length(current) < merge_len:
            segments[-1] += current
        else:
            segments.append(current)
    return segments


@functools.lru_cache(maxsize=1)
def _wetext() -> tuple[Any, Any]:  # (zh, en) wetext Normalizers: wetext ships no type hints
    from wetext import Normalizer

    return Normalizer(remove_erhua=False), Normalizer()


class TextNormalizer:
    """wetext-based normalisation (``enabled=False`` passes text through untouched)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def applies_to(self, text: str) -> bool:
        return self.enabled and bool(text) and not ("<|" in text and "|>" in text)

    def normalize(self, text: str) -> str:
        """One normalised string (no splitting)."""
        if not self.applies_to(text):
            return text
        zh, en = _wetext()
        text = text.strip()
        if contains_chinese(text):
            return _clean_chinese(zh.normalize(text))
        return spell_out_numbers(en.normalize(text))

    def normalize_and_split(self, text: str, tokenize: Callable[[str], list[int]]) -> list[str]:
        """Normalised sentences-segments, without segments made only of punctuation."""
        if not self.applies_to(text):
            return [text]
        normalized = self.normalize(text)
        lang = "zh" if contains_chinese(text.strip()) else "en"
        segments = split_paragraph(normalized, tokenize, lang)
        return [s for s in segments if not is_only_punctuation(s)]
