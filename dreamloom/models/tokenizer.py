"""The real CLIP tokenizer, built offline from the CLIP BPE table shipped with the package."""

from __future__ import annotations

import gzip
from importlib import resources

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_VOCAB_SIZE = 49408
_MERGE_COUNT = CLIP_VOCAB_SIZE - 256 * 2 - 2


def build_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The same vocabulary and merges as openai/clip-vit-large-patch14's tokenizer (SD 2.x and
    SDXL's second tokenizer pad with "!" instead of the end token)."""
    table = resources.files("dreamloom.models.assets").joinpath("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(table.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _MERGE_COUNT]]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    tokens += ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)
