"""A CLIP tokenizer built offline: CLIP's vocabulary size and special-token ids with byte-pair merges learned
from a text corpus, saved in the released tokenizers' files (vocab.json, merges.txt, tokenizer configs).

Real text encoders read token ids only through their embedding table, so a stand-in text encoder of the released
shape needs a tokenizer of the released vocabulary size, not the released merges (which cannot be downloaded here).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

CLIP_VOCAB = 49408  # OpenAI CLIP's BPE vocabulary (SD1.5's text encoder, CLIP ViT-B/16 and L/14)


def bpe_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """``count`` byte-pair merges learned greedily from ``words`` (each word ends in ``</w>``), most frequent first."""
    vocab = Counter(tuple(word[:-1]) + (word[-1] + "</w>",) for word in words if word)
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter = Counter()
        for symbols, freq in vocab.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: Counter = Counter()
        for symbols, freq in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        vocab = merged
    return merges


def bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's symbol for each byte: printable Latin-1 bytes stand for themselves, the other 68 are
    moved to code points 256.. so that every symbol is a visible character (GPT-2 / CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(moved)}


def save_clip_tokenizer(folder: Path, texts: Iterable[str], num_merges: int = 2000) -> None:
    """A CLIPTokenizer with CLIP's vocabulary size and special-token ids (start 49406, end 49407): the 512
    byte-level symbols, BPE merges learned from ``texts``, unreachable filler tokens; written as vocab.json +
    merges.txt + tokenizer configs, the files of the released tokenizers."""
    from transformers import CLIPTokenizer

    byte_map = bytes_to_unicode()
    corpus = " ".join(text.lower() for text in texts)
    words = ["".join(byte_map[b] for b in w.encode()) for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", corpus)]
    symbols = list(byte_map.values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = bpe_merges(words, num_merges)
    tokens += ["".join(pair) for pair in merges]
    tokens = list(dict.fromkeys(tokens))
    tokens += [f"<|unused{i}|>" for i in range(CLIP_VOCAB - 2 - len(tokens))]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77).save_pretrained(folder)
