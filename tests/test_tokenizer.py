"""Text tokenizer (on the tiny kit vocabulary) and wetext normalisation, against upstream fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosyml.kit.tokenizer import qwen_vocab_size, write_tiny_tokenizer
from cosyml.text.normalize import TextNormalizer, number_to_words, split_paragraph
from cosyml.text.tokenizer import (
    COSYVOICE2_SPECIALS,
    COSYVOICE3_SPECIALS,
    QWEN_SPECIALS,
    TextTokenizer,
    special_tokens,
)

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "frontend"


@pytest.fixture(scope="module")
def upstream() -> dict:
    return json.loads((FIXTURES / "upstream.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kit")
    write_tiny_tokenizer(root)
    return root


@pytest.fixture(scope="module")
def tok2(kit_dir) -> TextTokenizer:
    return TextTokenizer(kit_dir, "cosyvoice2")


@pytest.fixture(scope="module")
def tok3(kit_dir) -> TextTokenizer:
    return TextTokenizer(kit_dir, "cosyvoice3")


def test_layout_is_official(kit_dir):
    files = sorted(p.name for p in (kit_dir / "CosyVoice-BlankEN").iterdir())
    assert files == ["merges.txt", "tokenizer_config.json", "vocab.json"]  # no tokenizer.json, as upstream


def test_special_token_lists_match_upstream(upstream):
    assert list(special_tokens("cosyvoice2")) == upstream["tokenizer"]["cosyvoice2_specials"]
    assert list(special_tokens("cosyvoice3")) == upstream["tokenizer"]["cosyvoice3_specials"]
    assert len(COSYVOICE3_SPECIALS) == len(COSYVOICE2_SPECIALS) + 1 + 260


def test_special_ids_follow_official_relative_order(tok2, tok3, kit_dir):
    vocab = json.loads((kit_dir / "CosyVoice-BlankEN" / "vocab.json").read_text(encoding="utf-8"))
    base = len(vocab)  # 151643 in the official vocabulary
    assert [tok2.token_id(t) for t in QWEN_SPECIALS] == [base, base + 1, base + 2]
    # official: <|endofprompt|> = 151646 = right after the three Qwen specials
    assert tok2.token_id("<|endofprompt|>") == base + 3
    assert [tok2.token_id(t) for t in COSYVOICE2_SPECIALS] == list(range(base + 3, base + 3 + 17))
    assert tok3.token_id("<|endofsystem|>") == base + 3 + 17  # official 151663
    assert tok3.token_id("[ǜ]") == base + 2 + len(COSYVOICE3_SPECIALS)  # official 151923
    assert len(tok2) == base + 3 + 17 and len(tok3) == base + 3 + 17 + 261


def test_ids_match_upstream_tokenizer_classes(tok2, tok3, upstream):
    data = upstream["tokenizer"]
    assert len(tok2) == data["cosyvoice2_len"] and len(tok3) == data["cosyvoice3_len"]
    assert [tok2.encode(t) for t in data["texts"]] == data["cosyvoice2_ids"]
    assert [tok3.encode(t) for t in data["texts"]] == data["cosyvoice3_ids"]
    assert [tok2.decode(tok2.encode(t)) for t in data["texts"]] == data["decoded"]


def test_autotokenizer_and_raw_bpe_agree(kit_dir, tok2):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import AutoTokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    d = kit_dir / "CosyVoice-BlankEN"
    auto = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    raw = Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    for text in ("你好，世界！Hello world 123.", "The quick brown fox's 2024 jumps.", "春眠不觉晓 ok?"):
        ids = tok2.encode(text)
        assert ids == auto(text)["input_ids"] == raw.encode(text).ids
        assert tok2.decode(ids) == text


def test_encode_has_no_bos_and_keeps_specials_whole(tok2):
    ids = tok2.encode("好<|endofprompt|>")
    assert ids[-1] == tok2.token_id("<|endofprompt|>")
    assert ids[0] != tok2.token_id("<|endoftext|>")


def test_qwen_vocab_size_covers_v3_ids(kit_dir, tok3):
    size = qwen_vocab_size(kit_dir)
    assert size % 128 == 0 and size >= len(tok3) and size - len(tok3) < 128


def test_number_words_match_inflect(upstream):
    for digits, words in upstream["inflect"].items():
        assert number_to_words(digits) == words


def test_normalize_matches_upstream_wetext(upstream, tok2):
    norm = TextNormalizer()
    data = upstream["normalize"]
    for text, expected in zip(data["texts"], data["no_split"], strict=True):
        assert norm.normalize(text) == expected
    for text, expected in zip(data["texts"], data["split"], strict=True):
        assert norm.normalize_and_split(text, tok2.encode) == expected


def test_normalize_switch_off_passes_text_through(tok2):
    text = "今天是2024年3月5日"
    assert TextNormalizer(enabled=False).normalize(text) == text
    assert TextNormalizer(enabled=False).normalize_and_split(text, tok2.encode) == [text]


def test_split_paragraph_rules():
    zh = "第一句话。" * 30
    parts = split_paragraph(zh, lambda s: list(s), "zh")
    assert "".join(parts) == zh and all(len(p) <= 85 for p in parts)
    assert split_paragraph("他说：“好。”然后走了", lambda s: [], "zh") == ["他说：“好。”然后走了。"]
