"""The text tokenizer: Qwen2 byte-level BPE from ``<model_dir>/CosyVoice-BlankEN`` plus CosyVoice's specials.

Loaded with ``transformers.AutoTokenizer`` from the local directory only (never a hub). The CosyVoice
special tokens are added after the Qwen ones in the official order, so with the official vocabulary
``<|endofprompt|>`` is 151646 (v2 specials end at 151662; v3 adds ``<|endofsystem|>`` = 151663 and 260
phone/pinyin tokens up to 151923). ``encode`` returns ids with no BOS and recognises special tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path

from cosyml.errors import ModelDirError

VERSIONS = ("cosyvoice2", "cosyvoice3")
TOKENIZER_SUBDIR = "CosyVoice-BlankEN"
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENDOFTEXT = "<|endoftext|>"
ENDOFPROMPT = "<|endofprompt|>"

#: CosyVoice2 additions after the Qwen chat markers, in the official order.
COSYVOICE2_SPECIALS: tuple[str, ...] = (
    "<|endofprompt|>",
    "[breath]",
    "<strong>",
    "</strong>",
    "[noise]",
    "[laughter]",
    "[cough]",
    "[clucking]",
    "[accent]",
    "[quick_breath]",
    "<laughter>",
    "</laughter>",
    "[hissing]",
    "[sigh]",
    "[vocalized-noise]",
    "[lipsmack]",
    "[mn]",
)

_CMU_PHONES = (
    "AA AA0 AA1 AA2 AE AE0 AE1 AE2 AH AH0 AH1 AH2 AO AO0 AO1 AO2 AW AW0 AW1 AW2 AY AY0 AY1 AY2 B CH D DH "
    "EH EH0 EH1 EH2 ER ER0 ER1 ER2 EY EY0 EY1 EY2 F G HH IH IH0 IH1 IH2 IY IY0 IY1 IY2 JH K L M N NG "
    "OW OW0 OW1 OW2 OY OY0 OY1 OY2 P R S SH T TH UH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
)
_PINYIN_UNITS = (
    "a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo iè ié "
    "iòng ióng iù iú iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong ou p q r s "
    "sh t u uang ue un uo uà uài uàn uàng uá uái uán uáng uè ué uì uí uò uó uā uāi uān uāng uē uě uī "
    "uō uǎ uǎi uǎn uǎng uǐ uǒ vè w x y z zh à ài àn àng ào á ái án áng áo è èi èn èng èr é éi én éng "
    "ér ì ìn ìng í ín íng ò òng òu ó óng óu ù ùn ú ún ā āi ān āng āo ē ēi ēn ēng ě ěi ěn ěng ěr ī īn "
    "īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ ǜ"
)
#: CosyVoice3 = CosyVoice2 specials + ``<|endofsystem|>`` + 260 CMU phone and pinyin tokens.
COSYVOICE3_SPECIALS: tuple[str, ...] = (
    *COSYVOICE2_SPECIALS,
    "<|endofsystem|>",
    *(f"[{p}]" for p in _CMU_PHONES.split()),
    *(f"[{p}]" for p in _PINYIN_UNITS.split()),
)


def special_tokens(version: str) -> tuple[str, ...]:
    """Tokens added after ``<|endoftext|>`` (Qwen chat markers first, then CosyVoice's)."""
    if version not in VERSIONS:
        raise ModelDirError(f"tokenizer version {version!r}: expected one of {', '.join(VERSIONS)}")
    extra = COSYVOICE2_SPECIALS if version == "cosyvoice2" else COSYVOICE3_SPECIALS
    return (*QWEN_SPECIALS[1:], *extra)


def tokenizer_dir(path: str | Path) -> Path:
    """Accept a model directory or its ``CosyVoice-BlankEN`` subdirectory; check the files are there."""
    path = Path(path)
    if (path / TOKENIZER_SUBDIR).is_dir():
        path = path / TOKENIZER_SUBDIR
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        if not (path / name).is_file():
            raise ModelDirError(
                f"{path / name}: missing; point at a model directory whose {TOKENIZER_SUBDIR}/ holds the "
                "Qwen tokenizer files (or create a tiny kit with `cosyml kit DIR`)"
            )
    return path


class TextTokenizer:
    """Qwen2 BPE + CosyVoice special tokens for ``version`` ("cosyvoice2" or "cosyvoice3")."""

    def __init__(self, path: str | Path, version: str = "cosyvoice2", skip_special_tokens: bool = True) -> None:
        from transformers import AutoTokenizer

        self.path = tokenizer_dir(path)
        self.version = version
        self.skip_special_tokens = skip_special_tokens
        self.hf = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.hf.add_special_tokens(
            {
                "eos_token": ENDOFTEXT,
                "pad_token": ENDOFTEXT,
                "additional_special_tokens": list(special_tokens(version)),
            }
        )

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS; special tokens such as ``<|endofprompt|>`` become one id)."""
        return list(self.hf(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=self.skip_special_tokens))

    def token_id(self, token: str) -> int:
        token_id = self.hf.convert_tokens_to_ids(token)
        if not isinstance(token_id, int):  # a list comes back only for a list of tokens
            raise TypeError(f"{token!r}: expected one token")
        return token_id


@functools.lru_cache(maxsize=8)
def load_text_tokenizer(path: str, version: str = "cosyvoice2") -> TextTokenizer:
    """Cached :class:`TextTokenizer` (loading takes a while with the official 151k vocabulary)."""
    return TextTokenizer(path, version)
