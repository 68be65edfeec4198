"""A tiny Qwen2-style tokenizer in the official ``CosyVoice-BlankEN/`` layout.

Writes ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` (no ``tokenizer.json``, like the
official directory): a byte-level BPE trained on a small built-in zh/en text with the Qwen2 pipeline
(NFC, the Qwen2 split regex, byte-level without its own regex), so ``AutoTokenizer`` (which rebuilds that
pipeline for ``Qwen2Tokenizer``) gives the same ids as the trained model. The three Qwen specials follow
the learned vocabulary, as in Qwen (there: 151643..151645). Training is deterministic.

With ``official_ids`` the vocabulary is padded with filler entries that no text can produce (they hold a
character outside the byte-level alphabet) up to Qwen's 151643 regular tokens, so every special token has
its official id (``<|endoftext|>`` 151643, ``<|endofprompt|>`` 151646, ``<|endofsystem|>`` 151663) and
code that hard-codes an id, as upstream's CosyVoice3 LLM does for ``<|endofprompt|>``, runs unchanged.
Text encodes to the same ids either way; the price is a 151936-row embedding and a slower tokenizer load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cosyml.text.tokenizer import QWEN_SPECIALS, TOKENIZER_SUBDIR, TextTokenizer

#: Built-in training text: short zh and en sentences, digits and punctuation.
CORPUS = """\
今天天气很好，我们一起去公园散步吧。
你好，欢迎使用语音合成系统。这是一个测试句子。
他说：“明天见！”然后就离开了。
我喜欢听音乐，也喜欢看书和画画。
请在二零二四年三月五日之前提交报告。
这个声音听起来非常自然，像真人一样。
春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。
Hello, welcome to the speech synthesis demo.
The quick brown fox jumps over the lazy dog.
She sells sea shells by the sea shore, doesn't she?
I'll be there at 3:30 on Monday; don't be late!
Numbers like 1, 22, 333 and 2024 appear in text too.
Fine-tuning a voice takes a few dozen clips of one speaker.
What a wonderful day it is to go outside and play.
"""

BASE_VOCAB_SIZE = 800
#: Regular (non-special) tokens of the official Qwen2 vocabulary: ``<|endoftext|>`` comes next.
OFFICIAL_REGULAR_TOKENS = 151643
#: U+2400 is not in the byte-level alphabet, so BPE never emits a token containing it.
_FILLER_PREFIX = "\u2400"


def _train_bpe(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 3, trainer=trainer)
    return tok


def write_tiny_tokenizer(model_dir: str | Path, vocab_size: int = BASE_VOCAB_SIZE, official_ids: bool = False) -> Path:
    """Write ``<model_dir>/CosyVoice-BlankEN/{vocab.json, merges.txt, tokenizer_config.json}``.

    ``official_ids``: pad the vocabulary so the special tokens get the official ids (see the module doc).
    """
    out = Path(model_dir) / TOKENIZER_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_bpe(vocab_size)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if official_ids:
        vocab.update({f"{_FILLER_PREFIX}{i}": i for i in range(len(vocab), OFFICIAL_REGULAR_TOKENS)})
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    first = len(vocab)
    added = {
        str(first + i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(QWEN_SPECIALS)
    }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def qwen_vocab_size(model_dir: str | Path, multiple: int = 128) -> int:
    """Embedding rows the tiny Qwen2 needs: ``len`` of the v3 tokenizer (the larger) rounded up.

    The official model has 151936 rows for 151924 v3 ids (a multiple of 128); the same rule applied
    to the kit keeps every v2 and v3 special id inside the embedding table.
    """
    size = len(TextTokenizer(model_dir, "cosyvoice3"))
    return int(math.ceil(size / multiple) * multiple)
