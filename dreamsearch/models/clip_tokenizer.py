"""CLIP's tokenizer: byte-level BPE over the merges OpenAI trained CLIP with.

The merges file (``data/bpe_simple_vocab_16e6.txt.gz``) is shipped as openai/CLIP and
open_clip ship it (MIT, ``data/CLIP-LICENSE.txt``); nothing is downloaded. Why our own code
and not a package: open_clip's tokenizer imports torch and all of open_clip (~8 s cold),
and the ``tokenizers`` package needs the merges converted to its own files and cleans
text its own way, while a text vector matches the image vectors only if every id equals
CLIP's. What CLIP does is reproduced here, and ``tests/models/test_clip_text.py`` checks
the ids against open_clip's on accents, CJK, emoji, punctuation, odd whitespace and text
over the limit. Imports neither torch nor NumPy: an empty text is told at once.
"""

from __future__ import annotations

import gzip
import html
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from itertools import pairwise

import ftfy
import regex

#: Tokens CLIP reads, the start and end markers included.
CONTEXT_LENGTH = 77
#: The merges CLIP was trained with: the first of the file's lines after its header.
MERGES = 49152 - 256 - 2
START, END = "<start_of_text>", "<end_of_text>"
#: CLIP's split of cleaned text into words: its markers, English contractions, runs of
#: letters, single digits, runs of other non-space characters.
WORDS = regex.compile(
    rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
)


@dataclass(frozen=True)
class Tokens:
    """A text's token ids, start and end markers included; ``cut``: the text was longer
    than CLIP reads, and its end was left out."""

    ids: tuple[int, ...]
    cut: bool

    @property
    def empty(self) -> bool:
        return len(self.ids) <= 2


def byte_symbols() -> list[str]:
    """The character standing for each byte value in BPE words: printable Latin-1 bytes
    stand for themselves, every other byte for a character from U+0100 on, in byte order
    (so no word holds a space or a control character)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def clean(text: str) -> str:
    """CLIP's text cleaning: mojibake fixed (ftfy), HTML entities decoded (twice, as CLIP
    does), whitespace runs made one space, lower case."""
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


class ClipTokenizer:
    """Text to CLIP token ids. Thread-safe (the word cache only grows)."""

    def __init__(self, merges: list[tuple[str, str]]) -> None:
        self.symbols = byte_symbols()
        single = sorted(self.symbols)  # CLIP's vocabulary lists them by code point
        vocabulary = [*single, *(s + "</w>" for s in single), *(a + b for a, b in merges), START, END]
        self.ids = {token: number for number, token in enumerate(vocabulary)}
        self.merges = merges
        self.rank = {pair: number for number, pair in enumerate(merges)}
        self._words: dict[str, tuple[int, ...]] = {START: (self.ids[START],), END: (self.ids[END],)}

    @classmethod
    def from_file(cls, data: bytes) -> ClipTokenizer:
        """From the gzip'd merges file as OpenAI published it."""
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : MERGES + 1]
        return cls([(first, second) for first, second in (line.split() for line in lines)])

    def __call__(self, text: str) -> Tokens:
        """``text`` as CLIP reads it: start marker, at most 75 tokens, end marker."""
        ids = [self.ids[START], *self.encode(text), self.ids[END]]
        cut = len(ids) > CONTEXT_LENGTH
        if cut:
            ids = [*ids[: CONTEXT_LENGTH - 1], self.ids[END]]
        return Tokens(tuple(ids), cut)

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, without markers or a length limit."""
        out: list[int] = []
        for word in WORDS.findall(clean(text)):
            ids = self._words.get(word)
            if ids is None:
                symbols = "".join(self.symbols[b] for b in word.encode("utf-8"))
                ids = self._words[word] = tuple(self.ids[part] for part in self._merge(symbols))
            out.extend(ids)
        return out

    def _merge(self, word: str) -> list[str]:
        """BPE: the last symbol marked as a word end, then the adjacent pair of the lowest
        rank merged everywhere (left to right) until no adjacent pair is a merge."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            best = min(self.rank.get(pair, MERGES) for pair in pairwise(parts))
            if best == MERGES:
                break
            first, second = self.merges[best]
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts


@cache
def clip_tokenizer() -> ClipTokenizer:
    """The tokenizer over the shipped merges, read once per process (~0.2 s)."""
    return ClipTokenizer.from_file((files("dreamsearch.models") / "data" / "bpe_simple_vocab_16e6.txt.gz").read_bytes())
