"""The CosyVoice2 (and CosyVoice3) text-to-speech-token language model on a Qwen2 backbone.

State-dict layout (the official ``llm.pt``; see ``tests/fixtures/upstream-state-dicts.tsv``)::

    llm_embedding.weight            (2, D)          v2 only: row 0 = sos, row 1 = task_id ("turn")
    llm.model.model.*               Qwen2 backbone (embed_tokens (Vt, D) also embeds the text tokens)
    llm.model.lm_head.weight        (Vt, D)         tied to embed_tokens, never used in compute
    llm_decoder.weight [, .bias]    (R, D) [, (R,)] speech-token logits (bias only in v2)
    speech_embedding.weight         (R, D)          speech-token input embeddings

with D = ``llm_input_size`` (896), S = ``speech_token_size`` (6561) and R = S + 3 (v2) or S + 200 (v3).

Sequences (one row per utterance; position i predicts target i, IGNORE_ID = -1 is not scored):

- unistream: inputs ``[sos, instruct.., text.., task_id, speech..]``,
  targets ``[-1 x (1 + Li + Lt), speech.., eos]``.
- bistream (taken with probability 1/2 when ``Ls * m0 > m1 * Lt`` for ``mix_ratio = (m0, m1)``):
  after ``[sos, instruct..]`` come ``Lt // m0`` chunks of m0 text + m1 speech inputs whose targets are
  ``[-1 x (m0 - 1), those m1 speech tokens, fill]``, then the remaining text, task_id and remaining
  speech with targets ``[-1 x remaining text, remaining speech, eos]``. Fill is only ever a target.

Loss: label-smoothing KL (smoothing 0 is cross-entropy) summed over scored positions and divided by their
count (``length_normalized_loss``) or by the batch size; accuracy: argmax hits over scored positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from cosyml.errors import InputError, ModelDirError
from cosyml.models import keys
from cosyml.models.generation import DecodeRow, SamplingParams, decode_one
from cosyml.models.keys import Version
from cosyml.models.modeldir import ModelDir, load_strict
from cosyml.models.yaml_io import Tagged, require_tagged

IGNORE_ID = -1
StreamMode = Literal["mixed", "unistream", "bistream"]
LLM_CLASS: dict[Version, str] = {v: c["llm"] for v, c in keys.EXPECTED_CLASSES.items()}


@dataclass(frozen=True)
class LLMConfig:
    """Hyperparameters of the ``llm`` node of the model yaml."""

    version: Version = "v2"
    llm_input_size: int = 896
    llm_output_size: int = 896
    speech_token_size: int = 6561
    mix_ratio: tuple[int, int] = (5, 15)
    lsm_weight: float = 0.0
    length_normalized_loss: bool = True
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # text id of <|endofprompt|>, which a v3 prompt must hold: 151646 in the official vocabulary; a model
    # directory's own tokenizer decides (build_llm reads it), so a tiny kit vocabulary works too
    end_of_prompt_id: int = keys.END_OF_PROMPT_ID


@dataclass(frozen=True)
class TokenLayout:
    """Special speech-side ids of one model version (S = speech_token_size)."""

    sos_row: int  # row of the sos embedding (in llm_embedding for v2, speech_embedding for v3)
    task_row: int
    eos: int
    fill: int
    rows: int  # rows of speech_embedding and llm_decoder
    stop_ids: tuple[int, ...]
    min_len_mask_id: int  # the id upstream masks before min_len (v3: its sos, so eos is not masked)
    decoder_bias: bool
    separate_sos_table: bool  # v2 keeps sos/task_id in llm_embedding

    @classmethod
    def for_version(cls, version: Version, s: int) -> TokenLayout:
        if version == "v2":
            return cls(0, 1, s, s + 2, s + 3, (s, s + 1, s + 2), s, True, True)
        return cls(s, s + 2, s + 1, s + 3, s + 200, tuple(range(s, s + 200)), s, False, False)


@dataclass
class LLMOutput:
    """Training forward result."""

    loss: torch.Tensor  # () float
    acc: torch.Tensor  # () float, argmax accuracy over scored positions
    logits: torch.Tensor  # (B, T, R)
    target: torch.Tensor  # (B, T) long, IGNORE_ID where not scored
    lengths: torch.Tensor  # (B,) long, valid positions per row


def label_smoothing_loss(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0, normalize_length: bool = True
) -> torch.Tensor:
    """Upstream's LabelSmoothingLoss: KL(q || softmax(logits)) summed over scored positions.

    ``logits`` (B, T, R), ``target`` (B, T) with IGNORE_ID at unscored positions; q puts
    ``1 - smoothing`` on the target and ``smoothing / (R - 1)`` on every other id (smoothing 0 = CE).
    Divided by the number of scored positions (``normalize_length``) or by B.
    """
    logp = logits.float().log_softmax(dim=-1)
    scored = target != IGNORE_ID
    logp_target = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    eps = float(smoothing)
    if eps == 0.0:
        per_position = -logp_target
    else:
        other = eps / (logits.size(-1) - 1)
        const = (1 - eps) * math.log(1 - eps) + eps * math.log(other) if eps < 1 else math.log(other)
        per_position = const - (1 - eps) * logp_target - other * (logp.sum(-1) - logp_target)
    denom = scored.sum() if normalize_length else target.size(0)
    return per_position.masked_fill(~scored, 0.0).sum() / denom


def token_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of scored positions (target != IGNORE_ID, eos and fill included) whose argmax is the target."""
    scored = target != IGNORE_ID
    hits = (logits.argmax(-1) == target) & scored
    return (hits.sum() / scored.sum()).detach()


class QwenBackbone(nn.Module):
    """Holds ``Qwen2ForCausalLM`` as ``.model`` (the official ``llm.model.*`` key prefix)."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.model = Qwen2ForCausalLM(config)

    def forward(self, embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) input embeddings, (B,) valid lengths -> (B, T, D) final-norm hidden states."""
        positions = torch.arange(embeds.size(1), device=embeds.device)
        mask = positions.unsqueeze(0) < lengths.to(embeds.device).unsqueeze(1)
        # The inner model skips lm_head: the 151936-wide text logits are never needed.
        return self.model.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    def tie_weights(self) -> None:
        self.model.lm_head.weight = self.model.model.embed_tokens.weight


class Qwen2LM(nn.Module):
    """Speech-token LM of CosyVoice2 (``version="v2"``) or CosyVoice3 (``version="v3"``)."""

    def __init__(self, config: LLMConfig, qwen_config: Qwen2Config) -> None:
        super().__init__()
        if qwen_config.hidden_size != config.llm_input_size or qwen_config.hidden_size != config.llm_output_size:
            raise ModelDirError(
                f"Qwen2 config hidden_size {qwen_config.hidden_size} differs from the yaml's "
                f"llm_input_size/llm_output_size {config.llm_input_size}/{config.llm_output_size}; "
                "use the CosyVoice-BlankEN folder of the same model directory"
            )
        self.config = config
        self.layout = TokenLayout.for_version(config.version, config.speech_token_size)
        d = config.llm_input_size
        if self.layout.separate_sos_table:
            self.llm_embedding = nn.Embedding(2, d)
        self.llm = QwenBackbone(qwen_config)
        self.llm_decoder = nn.Linear(config.llm_output_size, self.layout.rows, bias=self.layout.decoder_bias)
        self.speech_embedding = nn.Embedding(self.layout.rows, d)

    # ---------------------------------------------------------------------------------------------
    # pieces

    @property
    def text_embedding(self) -> nn.Embedding:
        return self.llm.model.model.embed_tokens

    def _sos_task(self) -> torch.Tensor:
        """(2, D): the sos and task_id input embeddings."""
        table = self.llm_embedding.weight if self.layout.separate_sos_table else self.speech_embedding.weight
        return table[[self.layout.sos_row, self.layout.task_row]]

    def tie_weights(self) -> None:
        """Re-tie lm_head to embed_tokens (needed after ``to_empty`` from the meta device)."""
        self.llm.tie_weights()

    @property
    def device(self) -> torch.device:
        return self.speech_embedding.weight.device

    # ---------------------------------------------------------------------------------------------
    # training

    def choose_bistream(
        self,
        text_len: list[int],
        speech_len: list[int],
        mode: StreamMode = "mixed",
        generator: torch.Generator | None = None,
    ) -> list[bool]:
        """Per utterance: use the bistream layout? Eligible when ``Ls/Lt > m1/m0``; "mixed" picks half."""
        m0, m1 = self.config.mix_ratio
        eligible = [ls * m0 > m1 * lt for lt, ls in zip(text_len, speech_len, strict=True)]
        if mode == "unistream":
            return [False] * len(eligible)
        if mode == "bistream":
            return eligible
        draws = torch.rand(len(eligible), generator=generator).tolist()
        return [e and u < 0.5 for e, u in zip(eligible, draws, strict=True)]

    def _rows(
        self, lt: int, ls: int, li: int, text0: int, speech0: int, instr0: int, bistream: bool
    ) -> tuple[list[int], list[int]]:
        """Input rows into the gather table and speech positions (index into this utterance's speech, or a
        negative code: -1 ignore, -2 eos, -3 fill) of one utterance."""
        sos, task = 1, 2
        text = list(range(text0, text0 + lt))
        speech = list(range(speech0, speech0 + ls))
        rows = [sos, *range(instr0, instr0 + li)]
        tgt = [-1] * (1 + li)
        if not bistream:
            rows += [*text, task, *speech]
            tgt += [-1] * lt + list(range(ls)) + [-2]
            return rows, tgt
        m0, m1 = self.config.mix_ratio
        n_full = lt // m0
        for j in range(n_full):
            rows += text[j * m0 : (j + 1) * m0] + speech[j * m1 : (j + 1) * m1]
            tgt += [-1] * (m0 - 1) + list(range(j * m1, (j + 1) * m1)) + [-3]
        rest_text = lt - n_full * m0
        rows += [*text[n_full * m0 :], task, *speech[n_full * m1 :]]
        tgt += [-1] * rest_text + list(range(n_full * m1, ls)) + [-2]
        return rows, tgt

    def build_sequences(
        self,
        batch: Mapping[str, torch.Tensor],
        mode: StreamMode = "mixed",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch dict -> (inputs (B, T, D) padded with -1.0, targets (B, T) padded with -1, lengths (B,))."""
        if "speech_token" not in batch:
            raise InputError("training batch has no 'speech_token'; extract speech tokens before training")
        device = self.device
        text_token = batch["text_token"].to(device)
        speech_token = batch["speech_token"].to(device)
        text_len = batch["text_token_len"].tolist()
        speech_len = batch["speech_token_len"].tolist()
        b = len(text_len)
        instruct_token: torch.Tensor | None = None
        instruct_len = [0] * b
        if not self.layout.separate_sos_table:  # v3: every row starts with its instruct text
            if "instruct_token" not in batch:
                raise InputError(
                    "CosyVoice3 training batch has no 'instruct_token'; prepare data with an instruct text"
                )
            instruct_token = batch["instruct_token"].to(device)
            instruct_len = batch["instruct_token_len"].tolist()
        text_emb = self.text_embedding(text_token)  # (B, Lt, D)
        speech_emb = self.speech_embedding(speech_token)  # (B, Ls, D)
        d = text_emb.size(-1)
        pad_row = text_emb.new_full((1, d), float(IGNORE_ID))
        pieces = [pad_row, self._sos_task().to(text_emb.dtype), text_emb.reshape(-1, d), speech_emb.reshape(-1, d)]
        text_base = 3
        speech_base = text_base + text_emb.size(0) * text_emb.size(1)
        instr_base = speech_base + speech_emb.size(0) * speech_emb.size(1)
        instruct_stride = 0
        if instruct_token is not None:
            pieces.append(self.text_embedding(instruct_token).reshape(-1, d))
            instruct_stride = instruct_token.size(1)
        table = torch.cat(pieces, dim=0)

        use_bistream = self.choose_bistream(text_len, speech_len, mode, generator)
        speech_values = speech_token.tolist()
        all_rows: list[list[int]] = []
        all_targets: list[list[int]] = []
        special = {-1: IGNORE_ID, -2: self.layout.eos, -3: self.layout.fill}
        for i in range(b):
            rows, codes = self._rows(
                text_len[i],
                speech_len[i],
                instruct_len[i],
                text_base + i * text_token.size(1),
                speech_base + i * speech_token.size(1),
                instr_base + i * instruct_stride,
                use_bistream[i],
            )
            sp = speech_values[i]
            all_rows.append(rows)
            all_targets.append([special[c] if c < 0 else sp[c] for c in codes])
        lengths = [len(r) for r in all_rows]
        t = max(lengths)
        index = torch.zeros(b, t, dtype=torch.long)
        target = torch.full((b, t), IGNORE_ID, dtype=torch.long)
        for i, (rows, tgt) in enumerate(zip(all_rows, all_targets, strict=True)):
            index[i, : len(rows)] = torch.tensor(rows, dtype=torch.long)
            target[i, : len(tgt)] = torch.tensor(tgt, dtype=torch.long)
        inputs = table[index.to(device)]
        return inputs, target.to(device), torch.tensor(lengths, dtype=torch.long, device=device)

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        mode: StreamMode = "mixed",
        generator: torch.Generator | None = None,
    ) -> LLMOutput:
        """Training forward on a batch dict.

        ``batch``: ``text_token`` (B, Lt) long, ``text_token_len`` (B,), ``speech_token`` (B, Ls) long,
        ``speech_token_len`` (B,); v3 also ``instruct_token`` (B, Li) and ``instruct_token_len``.
        ``mode`` forces a layout ("unistream", or "bistream" wherever eligible); "mixed" draws per
        utterance from ``generator`` (CPU; the global torch RNG when None).
        """
        inputs, target, lengths = self.build_sequences(batch, mode, generator)
        hidden = self.llm(inputs, lengths)
        logits = self.llm_decoder(hidden)
        loss = label_smoothing_loss(
            logits, target, self.config.lsm_weight, normalize_length=self.config.length_normalized_loss
        )
        acc = token_accuracy(logits, target)
        return LLMOutput(loss=loss, acc=acc, logits=logits, target=target, lengths=lengths)

    # ---------------------------------------------------------------------------------------------
    # inference

    def prompt_embeddings(
        self, text: torch.Tensor, prompt_text: torch.Tensor | None, prompt_speech_token: torch.Tensor | None
    ) -> torch.Tensor:
        """(1, L, D) decoder prefix ``[sos, prompt_text + text, task_id, prompt speech]``."""
        device = self.device
        all_text = text.reshape(-1).to(device)
        if prompt_text is not None and prompt_text.numel() > 0:
            all_text = torch.cat([prompt_text.reshape(-1).to(device), all_text])
        if not self.layout.separate_sos_table and self.config.end_of_prompt_id not in all_text.tolist():
            raise InputError(
                "CosyVoice3 input has no <|endofprompt|> token; start the prompt text (or instruct) with "
                "'You are a helpful assistant.<|endofprompt|>'"
            )
        sos, task = self._sos_task().unsqueeze(1)  # (1, D) each
        parts = [sos, self.text_embedding(all_text), task]
        if prompt_speech_token is not None and prompt_speech_token.numel() > 0:
            parts.append(self.speech_embedding(prompt_speech_token.reshape(-1).to(device)))
        return torch.cat(parts, dim=0).unsqueeze(0)

    def inference(
        self,
        text: torch.Tensor,
        prompt_text: torch.Tensor | None = None,
        prompt_speech_token: torch.Tensor | None = None,
        *,
        sampling: SamplingParams | None = None,
        min_token_text_ratio: float = 2.0,
        max_token_text_ratio: float = 20.0,
        generator: torch.Generator | None = None,
        scores_out: list[torch.Tensor] | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[int]:
        """Yield speech-token ids for ``text`` (Lt,) text-token ids, one per step, with a KV cache.

        ``prompt_text`` / ``prompt_speech_token`` (1-D) continue a zero-shot prompt. Decoding stops at a
        stop id (not yielded) or after ``int(Lt * max_token_text_ratio)`` tokens; before
        ``int(Lt * min_token_text_ratio)`` tokens the eos id of v2 is masked (v3: upstream masks its sos
        id instead, so early stops remain possible; kept for parity). Draws use ``generator`` (a CPU
        ``torch.Generator``; the global RNG when None). ``scores_out`` collects each step's (R,)
        log-probabilities as seen by the sampler. ``max_tokens`` caps the tokens further (serving limits).
        The loop is :func:`cosyml.models.generation.decode_one`.
        """
        row = DecodeRow(
            text=text,
            prompt_text=prompt_text,
            prompt_speech=prompt_speech_token,
            sampling=sampling or self.config.sampling,
            min_token_text_ratio=min_token_text_ratio,
            max_token_text_ratio=max_token_text_ratio,
            max_tokens=max_tokens,
            generator=generator,
        )
        return decode_one(self, row, scores_out)


CosyVoice3LM = Qwen2LM  # one class; the version lives in LLMConfig


# -------------------------------------------------------------------------------------------------
# construction from a model directory


def qwen_config_from_dir(qwen_dir: str | Path) -> Qwen2Config:
    """The backbone config from ``<dir>/CosyVoice-BlankEN/config.json``, with SDPA attention."""
    path = Path(qwen_dir) / "config.json"
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; copy the CosyVoice-BlankEN folder of the official model directory")
    try:
        config = Qwen2Config.from_json_file(str(path))
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: not a readable Qwen2 config ({exc}); restore the official file") from None
    config._attn_implementation = "sdpa"
    return config


def llm_config_from_yaml(config: Mapping[str, Any], path: str | Path = "model yaml") -> LLMConfig:
    """:class:`LLMConfig` from the parsed yaml's ``llm`` node (see :func:`read_model_yaml`)."""
    node = require_tagged(dict(config), "llm", path)
    versions = {cls: v for v, cls in LLM_CLASS.items()}
    if node.class_name not in versions:
        raise ModelDirError(f"{path}: 'llm' is {node.class_name}; cosyml supports {', '.join(versions)}")
    sampling = node.get("sampling")
    mix = node.get("mix_ratio", [5, 15])
    try:
        return LLMConfig(
            version=versions[node.class_name],
            llm_input_size=int(node.kwargs()["llm_input_size"]),
            llm_output_size=int(node.kwargs()["llm_output_size"]),
            speech_token_size=int(node.kwargs()["speech_token_size"]),
            mix_ratio=(int(mix[0]), int(mix[1])),
            lsm_weight=float(node.get("lsm_weight", 0.0)),
            length_normalized_loss=bool(node.get("length_normalized_loss", True)),
            sampling=SamplingParams.from_kwargs(sampling.kwargs() if isinstance(sampling, Tagged) else {}),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelDirError(f"{path}: bad or missing 'llm' value ({exc}); restore the official model yaml") from None


def _qwen_dir_from_yaml(config: Mapping[str, Any]) -> Path:
    node = config.get("llm")
    inner = node.get("llm") if isinstance(node, Tagged) else None
    value = inner.get("pretrain_path") if isinstance(inner, Tagged) else None
    value = value or config.get("qwen_pretrain_path")
    if not value:
        raise ModelDirError(
            "model yaml: no qwen_pretrain_path; read the yaml through ModelDir so it points at CosyVoice-BlankEN"
        )
    return Path(str(value))


def _end_of_prompt_id(md: ModelDir) -> int:
    """The id the directory's own text tokenizer gives ``<|endofprompt|>`` (151646 in official ones)."""
    from cosyml.text.tokenizer import load_text_tokenizer

    return load_text_tokenizer(str(md.qwen_dir), md.hparams.tokenizer_version).token_id("<|endofprompt|>")


def build_llm(
    source: ModelDir | str | Path | Mapping[str, Any],
    *,
    qwen_config: Qwen2Config | None = None,
    device: torch.device | str | None = None,
) -> Qwen2LM:
    """A randomly initialised LLM shaped by a model directory (or a parsed model yaml); no weights loaded.

    The backbone config comes from ``CosyVoice-BlankEN/config.json`` unless ``qwen_config`` is given.
    Pass ``device="meta"`` to build without allocating weights.
    """
    if isinstance(source, str | Path):
        source = ModelDir(source)
    config: Mapping[str, Any]
    if isinstance(source, ModelDir):
        config, yaml_path, qwen_dir = source.config, source.yaml_path, source.qwen_dir
    else:
        config, yaml_path, qwen_dir = source, Path("model yaml"), None
    llm_config = llm_config_from_yaml(config, yaml_path)
    if isinstance(source, ModelDir) and llm_config.version == "v3":
        llm_config = dataclasses.replace(llm_config, end_of_prompt_id=_end_of_prompt_id(source))
    if qwen_config is None:
        qwen_config = qwen_config_from_dir(qwen_dir or _qwen_dir_from_yaml(config))
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return Qwen2LM(llm_config, qwen_config)


def load_llm(model_dir: ModelDir | str | Path, device: torch.device | str = "cpu") -> Qwen2LM:
    """Build the LLM of ``model_dir`` and load its ``llm.pt`` strictly; returned in eval mode on ``device``."""
    md = model_dir if isinstance(model_dir, ModelDir) else ModelDir(model_dir)
    with torch.device("meta"):
        model = build_llm(md)
    model.to_empty(device="cpu")
    model.tie_weights()
    _reset_rotary(model)
    load_strict(model, md.llm_path, part="llm")
    return model.to(device).eval()


def _reset_rotary(model: Qwen2LM) -> None:
    """Rebuild the rotary-embedding module: its ``inv_freq`` buffers are not in the state dict and hold
    garbage after ``to_empty``."""
    inner = model.llm.model.model
    with torch.device("cpu"):
        inner.rotary_emb = type(inner.rotary_emb)(config=inner.config)
