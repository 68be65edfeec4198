"""The synthesis engine: a CosyVoice2 or Fun-CosyVoice3 model directory loaded once, serving every mode,
whole or streamed.

    engine = SynthEngine.load("pretrained/CosyVoice2-0.5B", device="cpu")
    result = engine.synthesize(SynthRequest(text="你好", mode="sft", speaker="narrator", seed=1))
    write_wav("out.wav", result.wav, result.sample_rate)

    engine.swap(llm="exp/llm/epoch_4_whole.pt")     # fine-tuned LLM + base flow
    engine.swap(llm="base", flow="exp/flow/avg.pt")  # base LLM + averaged flow
    for chunk in engine.stream(request):             # streamed 24 kHz chunks
        play(chunk.wav)

Per request: the text is normalised (wetext) unless ``normalize=False`` and split into sentence
segments only with ``split_sentences=True`` (otherwise one segment, one LLM pass). For each segment the
LLM (KV cache, RAS sampling) decodes speech tokens from ``[sos, prompt text + text, task_id, prompt
speech]`` and :class:`~cosyml.synth.token2wav.Token2Wav` renders them. What each mode puts into the LLM
and flow prompts is described in :mod:`cosyml.synth.request`.

CosyVoice3 directories (``cosyvoice3.yaml``) differ in four places, all handled here: the LLM ids (sos /
task_id are ``speech_embedding`` rows, 200 stop ids; :mod:`cosyml.models.generation`), the
``<|endofprompt|>`` prefixes a plain text, transcript or instruction gets (:mod:`cosyml.synth.v3`, the
default system prompt is :data:`cosyml.synth.v3.SYSTEM_PROMPT`), runs of more than 5 silent tokens
dropped before the flow (as upstream), and the DiT flow + causal HiFT render
(:mod:`cosyml.synth.token2wav`).

Randomness: a request's ``seed`` seeds two generators, one for the LLM's draws (CPU) and one for HiFT's
source noise (on the engine's device; v3's causal HiFT uses a fixed noise table instead); the flow
starts from fixed noise. The same request and seed give
the same tokens and the same audio on the CPU, streamed or not (the LLM's draws do not depend on how
the audio is rendered).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosyml.devices import resolve_device
from cosyml.errors import CosymlError, ModelDirError
from cosyml.features.mel import MelConfig
from cosyml.models.flow import FlowModel, build_flow
from cosyml.models.generation import DecodeRow, SamplingParams, decode_batch, decode_one
from cosyml.models.hift import HiFT
from cosyml.models.hift_causal import CausalHiFT
from cosyml.models.llm import Qwen2LM, load_llm
from cosyml.models.modeldir import ModelDir, load_strict
from cosyml.models.vocoder import build_hift
from cosyml.synth.errors import NoSpeechError, SynthInputError, SynthParamError, UnknownSpeakerError
from cosyml.synth.frontend import (
    PromptFeatures,
    PromptFrontend,
    Speaker,
    TextFrontend,
    load_speaker_file,
    pick_speaker,
)
from cosyml.synth.request import StreamChunk, SynthRequest, SynthResult, Timings
from cosyml.synth.token2wav import FlowPrompt, StageTimes, Token2Wav
from cosyml.synth.v3 import SYSTEM_PROMPT, SYSTEM_PROMPT_PREFIX, KeepAll, SilenceLimiter
from cosyml.synth.weights import BASE, WeightSlot, WeightSource
from cosyml.text.tokenizer import ENDOFPROMPT, load_text_tokenizer


def _vocoder_seed(seed: int) -> int:
    """A second, distinct stream for HiFT's noise, derived from the request seed."""
    return (seed * 1_000_003 + 0x5EED) % (2**63)


@dataclass
class _Job:
    """A request turned into model inputs (everything but the speech tokens)."""

    request: SynthRequest
    segments: list[str]
    text_tokens: list[torch.Tensor]  # per segment, (Lt,) long
    llm_prompt_text: torch.Tensor | None  # (Lp,) long
    llm_prompt_speech: torch.Tensor | None  # (Ls,) long
    flow_prompt: FlowPrompt
    sampling: SamplingParams
    seed: int
    llm_generator: torch.Generator
    vocoder_generator: torch.Generator
    timings: Timings


class SynthEngine:
    """A loaded model directory. Build with :meth:`load`; not thread-safe (one request at a time)."""

    def __init__(
        self,
        model_dir: ModelDir,
        device: torch.device,
        llm: Qwen2LM,
        flow: FlowModel,
        hift: HiFT | CausalHiFT,
        text: TextFrontend,
        prompt: PromptFrontend,
        speakers: dict[str, Speaker],
    ) -> None:
        self.model_dir = model_dir
        self.device = device
        self.llm = llm
        self.flow = flow
        self.hift = hift
        self.text = text
        self.prompt = prompt
        self.speakers = speakers
        self.hparams = model_dir.hparams
        self.version = model_dir.version  # "v2" | "v3"
        self.sample_rate = self.hparams.sample_rate
        self.slots = {
            "llm": WeightSlot("llm", llm, model_dir.llm_path),
            "flow": WeightSlot("flow", flow, model_dir.flow_path),
        }
        self.token2wav = Token2Wav(flow, hift, self.hparams.chunk_size, device)
        self._speaker_files: dict[str, dict[str, Speaker]] = {}

    # -------------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        model_dir: str | Path | ModelDir,
        device: str | torch.device = "cpu",
        llm: str | Path | None = None,
        flow: str | Path | None = None,
        speakers: str | Path | None = None,
    ) -> SynthEngine:
        """Load ``model_dir`` (yaml, tokenizer, llm/flow/hift weights, spk2info.pt if present) onto ``device``.

        A CosyVoice2 (``cosyvoice2.yaml``) or Fun-CosyVoice3 (``cosyvoice3.yaml``) directory.

        ``llm`` / ``flow``: other weights to start with (a file, a checkpoint, a directory, or "base").
        ``speakers``: an extra speaker file (spk2info.pt / spk2embedding.pt) merged over spk2info.pt.
        The ONNX front-end sessions open on the first request that has a prompt wav.
        """
        md = model_dir if isinstance(model_dir, ModelDir) else ModelDir(model_dir)
        md.check(frontend=False)
        dev = resolve_device(device)
        hp = md.hparams
        llm_module = load_llm(md, device=dev)
        flow_module = build_flow(md.config)
        load_strict(flow_module, md.flow_path, part="flow")
        hift_module = build_hift(md.config, md.yaml_path)
        load_strict(hift_module, md.hift_path, part="hift")
        hift_module.fold_weight_norm()
        flow_module.to(dev).eval()
        hift_module.to(dev).eval()
        tokenizer = load_text_tokenizer(str(md.qwen_dir), hp.tokenizer_version)
        if md.version == "v3" and tokenizer.encode(ENDOFPROMPT) != [tokenizer.token_id(ENDOFPROMPT)]:
            raise ModelDirError(
                f"{md.qwen_dir}: the tokenizer has no {ENDOFPROMPT} token, which CosyVoice3 needs; "
                "restore the CosyVoice-BlankEN folder and get_tokenizer version of the official directory"
            )
        mel_config = MelConfig.from_model_config(md.config)
        prompt = PromptFrontend(md.campplus_path, md.speech_tokenizer_path, mel_config, device=dev.type)
        known: dict[str, Speaker] = {}
        if md.spk2info_path.is_file():
            known.update(load_speaker_file(md.spk2info_path, hp.spk_embed_dim))
        if speakers is not None:
            known.update(load_speaker_file(speakers, hp.spk_embed_dim))
        text = TextFrontend(tokenizer, md.version)
        engine = cls(md, dev, llm_module, flow_module, hift_module, text, prompt, known)
        engine.slots["llm"].mark_loaded(BASE)
        engine.slots["flow"].mark_loaded(BASE)
        engine.swap(llm=llm, flow=flow)
        return engine

    def swap(self, llm: WeightSource | None = None, flow: WeightSource | None = None) -> dict[str, str]:
        """Swap LLM and/or flow weights (None: keep; "base": the directory's own; a weight file, a model
        directory or :class:`~cosyml.synth.weights.InMemoryWeights`). Returns :attr:`weights`."""
        for part, source in (("llm", llm), ("flow", flow)):
            if source is not None:
                self.slots[part].use(source)
        return self.weights

    @property
    def weights(self) -> dict[str, str]:
        """Where the loaded weights came from: ``{"llm": "base" | path, "flow": ..., "hift": "base"}``."""
        return {"llm": self.slots["llm"].source, "flow": self.slots["flow"].source, "hift": BASE}

    @property
    def speaker_names(self) -> list[str]:
        return sorted(self.speakers)

    # -------------------------------------------------------------------------------------- public API

    def synthesize(self, request: SynthRequest) -> SynthResult:
        """Synthesise one request (non-streaming); one-line :class:`CosymlError` on bad input."""
        start = time.perf_counter()
        return self._run_job(self._prepare(request), start)

    def _run_job(self, job: _Job, start: float) -> SynthResult:
        stage = StageTimes()
        wavs: list[np.ndarray] = []
        segment_tokens: list[list[int]] = []
        for text_tokens in job.text_tokens:
            tokens = list(self._tokens(job, text_tokens))
            wav = self.token2wav.render(
                tokens, job.flow_prompt, speed=job.request.speed, generator=job.vocoder_generator, times=stage
            )
            wavs.append(wav.numpy())
            segment_tokens.append(tokens)
        return self._result(job, wavs, segment_tokens, stage, start)

    def stream(self, request: SynthRequest) -> SynthStream:
        """Stream one request: iterate the returned object for :class:`StreamChunk` s; its ``result``
        (the concatenated audio, tokens and timings) is set once the iteration ends."""
        if request.speed != 1.0:
            raise SynthParamError(f"speed {request.speed} works only without streaming; drop --stream or --speed")
        return SynthStream(self, request)

    def synthesize_batch(
        self,
        requests: Sequence[SynthRequest],
        batch_size: int = 8,
        on_done: Callable[[int, SynthResult | CosymlError], None] | None = None,
    ) -> list[SynthResult | CosymlError]:
        """Synthesise many requests; a bad request yields its :class:`CosymlError` and the rest go on.

        Up to ``batch_size`` consecutive one-segment requests using the same weights share one batched
        LLM decode (:mod:`cosyml.models.generation`: each keeps its own sampling and
        seed). The flow and HiFT then render each request alone: padding would change their output
        (their non-causal convolutions see it). Other requests run one by one, in order. Prompt features
        of a prompt wav shared by several requests are computed once.
        """
        out: list[SynthResult | CosymlError | None] = [None] * len(requests)
        group: list[tuple[int, _Job, float]] = []

        def finish(i: int, item: SynthResult | CosymlError) -> None:
            out[i] = item
            if on_done is not None:
                on_done(i, item)

        def flush() -> None:
            if not group:
                return
            for i, item in zip([g[0] for g in group], self._decode_and_render(group), strict=True):
                finish(i, item)
            group.clear()

        for i, request in enumerate(requests):
            start = time.perf_counter()
            if request.llm is not None or request.flow is not None:
                try:
                    if self._would_swap(request):
                        flush()  # the group decodes with the weights it was prepared for
                    self.swap(llm=request.llm, flow=request.flow)
                except CosymlError as exc:
                    finish(i, exc)
                    continue
                request = request.replace(llm=None, flow=None)
            if batch_size <= 1:
                flush()
                try:
                    finish(i, self.synthesize(request))
                except CosymlError as exc:
                    finish(i, exc)
                continue
            try:
                job = self._prepare(request)
            except CosymlError as exc:
                finish(i, exc)
                continue
            if len(job.text_tokens) != 1:
                flush()
                try:
                    finish(i, self._run_job(job, start))
                except CosymlError as exc:
                    finish(i, exc)
                continue
            group.append((i, job, start))
            if len(group) >= batch_size:
                flush()
        flush()
        return [item for item in out if item is not None]

    def _would_swap(self, request: SynthRequest) -> bool:
        return any(
            source is not None and self.slots[part].would_change(source)
            for part, source in (("llm", request.llm), ("flow", request.flow))
        )

    def _decode_and_render(self, group: list[tuple[int, _Job, float]]) -> list[SynthResult | CosymlError]:
        """One batched LLM decode for one-segment jobs, then a render per job."""
        rows = [_decode_row(job, job.text_tokens[0]) for _, job, _ in group]
        t0 = time.perf_counter()
        all_tokens = [self._silence_limiter().filter(tokens) for tokens in decode_batch(self.llm, rows)]
        shared_llm_s = (time.perf_counter() - t0) / len(group)
        results: list[SynthResult | CosymlError] = []
        for (_, job, start), tokens in zip(group, all_tokens, strict=True):
            job.timings.llm_s += shared_llm_s
            if not tokens:
                results.append(self._no_speech(job, job.text_tokens[0]))
                continue
            stage = StageTimes()
            wav = self.token2wav.render(
                tokens, job.flow_prompt, speed=job.request.speed, generator=job.vocoder_generator, times=stage
            )
            results.append(self._result(job, [wav.numpy()], [tokens], stage, start))
        return results

    # -------------------------------------------------------------------------------------- internals

    def _prepare(self, request: SynthRequest) -> _Job:
        request.validate()
        if request.llm is not None or request.flow is not None:
            self.swap(llm=request.llm, flow=request.flow)
        t0 = time.perf_counter()
        segments = self.text.segments(request.text, request.normalize, request.split_sentences)
        llm_prompt_text: torch.Tensor | None = None
        llm_prompt_speech: torch.Tensor | None = None
        mode = request.mode
        if mode == "sft":
            speaker = self._speaker(request)
            flow_prompt = FlowPrompt.speaker_only(speaker.embedding, self.flow.config.output_size)
        elif mode == "zero_shot":
            if request.prompt_wav is not None:
                feats = self.prompt.features(request.prompt_wav)
                flow_prompt = _prompt_of(feats)
                llm_prompt_text = self.text.encode(
                    self.text.prompt_text(request.prompt_text or "", request.normalize), "prompt text"
                )
            else:
                speaker = self._speaker(request)
                if speaker.prompt_tokens is None or speaker.prompt_feat is None:
                    raise UnknownSpeakerError(
                        f"speaker '{speaker.name}' has no stored prompt; zero_shot needs --prompt-wav and --prompt-text"
                    )
                flow_prompt = FlowPrompt(speaker.prompt_tokens, speaker.prompt_feat, speaker.embedding)
                if request.prompt_text:
                    llm_prompt_text = self.text.encode(
                        self.text.prompt_text(request.prompt_text, request.normalize), "prompt text"
                    )
                elif speaker.prompt_text is not None:
                    llm_prompt_text = self.text.stored_prompt_ids(speaker.prompt_text)
            llm_prompt_speech = flow_prompt.tokens[0]
        elif mode == "cross_lingual":
            flow_prompt = _prompt_of(self.prompt.features(request.prompt_wav))  # type: ignore[arg-type]  # SynthRequest's check refuses a cross_lingual request without prompt_wav
        else:  # instruct
            llm_prompt_text = self.text.encode(self.text.instruct_text(request.instruct or ""), "instruction")
            if request.prompt_wav is not None:
                flow_prompt = _prompt_of(self.prompt.features(request.prompt_wav))
            else:
                speaker = self._speaker(request)
                if speaker.prompt_tokens is not None and speaker.prompt_feat is not None:
                    flow_prompt = FlowPrompt(speaker.prompt_tokens, speaker.prompt_feat, speaker.embedding)
                else:
                    flow_prompt = FlowPrompt.speaker_only(speaker.embedding, self.flow.config.output_size)
        has_prompt = llm_prompt_text is not None
        text_tokens = [self.text.encode(self.text.tts_text(s, has_prompt)) for s in segments]
        if self.version == "v3":
            self._check_prompt_end(llm_prompt_text, text_tokens)
        base = self.hparams.sampling
        sampling = SamplingParams(
            top_p=base.top_p if request.top_p is None else float(request.top_p),
            top_k=base.top_k if request.top_k is None else int(request.top_k),
            win_size=base.win_size if request.win_size is None else int(request.win_size),
            tau_r=base.tau_r if request.tau_r is None else float(request.tau_r),
        )
        seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        llm_generator = torch.Generator(device="cpu").manual_seed(seed)
        vocoder_generator = torch.Generator(device=self.device).manual_seed(_vocoder_seed(seed))
        timings = Timings(frontend_s=time.perf_counter() - t0)
        return _Job(
            request=request,
            segments=segments,
            text_tokens=text_tokens,
            llm_prompt_text=llm_prompt_text,
            llm_prompt_speech=llm_prompt_speech,
            flow_prompt=flow_prompt,
            sampling=sampling,
            seed=seed,
            llm_generator=llm_generator,
            vocoder_generator=vocoder_generator,
            timings=timings,
        )

    def _speaker(self, request: SynthRequest) -> Speaker:
        dim = self.hparams.spk_embed_dim
        if request.speaker_file is not None:
            key = str(Path(request.speaker_file).resolve())
            if key not in self._speaker_files:
                self._speaker_files[key] = load_speaker_file(request.speaker_file, dim)
            return pick_speaker(self._speaker_files[key], request.speaker, str(request.speaker_file))
        if not self.speakers:
            raise UnknownSpeakerError(
                f"unknown speaker '{request.speaker}': {self.model_dir.spk2info_path} does not exist; pass "
                "--speaker-file spk2embedding.pt (from `cosyml extract`) or use --prompt-wav"
            )
        return pick_speaker(self.speakers, request.speaker, str(self.model_dir.spk2info_path))

    def _check_prompt_end(self, prompt_text: torch.Tensor | None, text_tokens: list[torch.Tensor]) -> None:
        """CosyVoice3 needs ``<|endofprompt|>`` in prompt text + text (upstream asserts it)."""
        marker = self.text.tokenizer.token_id(ENDOFPROMPT)
        in_prompt = prompt_text is not None and marker in prompt_text.tolist()
        if not in_prompt and not all(marker in t.tolist() for t in text_tokens):
            raise SynthInputError(
                f"CosyVoice3 input has no {ENDOFPROMPT}; pass plain text (the engine adds "
                f"'{SYSTEM_PROMPT_PREFIX}') or put {ENDOFPROMPT} after your own system prompt"
            )

    def _silence_limiter(self) -> SilenceLimiter:
        """v3: upstream's limit on runs of silent tokens; v2: keeps every token."""
        return SilenceLimiter() if self.version == "v3" else KeepAll()

    def _tokens(self, job: _Job, text_tokens: torch.Tensor) -> Iterator[int]:
        """Speech tokens of one segment that reach the flow, timed into ``job.timings.llm_s``.

        At most ``max_tokens`` are decoded; v3 drops silent tokens beyond a run of 5 (see :mod:`cosyml.synth.v3`).
        """
        decoder = decode_one(self.llm, _decode_row(job, text_tokens))
        limiter = self._silence_limiter()
        count = 0
        while True:
            t0 = time.perf_counter()
            token = next(decoder, None)
            job.timings.llm_s += time.perf_counter() - t0
            if token is None:
                break
            if limiter.keep(token):
                count += 1
                yield token
        decoder.close()
        if count == 0:
            raise self._no_speech(job, text_tokens)

    def _no_speech(self, job: _Job, text_tokens: torch.Tensor) -> NoSpeechError:
        return NoSpeechError(
            f"text {_short(job.segments, text_tokens, self)!r} produced no speech tokens before the LLM stopped; "
            "check the LLM weights (--llm) or raise --min-ratio"
        )

    def _result(
        self, job: _Job, wavs: list[np.ndarray], segment_tokens: list[list[int]], stage: StageTimes, start: float
    ) -> SynthResult:
        timings = job.timings
        timings.flow_s += stage.flow_s
        timings.hift_s += stage.hift_s
        timings.total_s = time.perf_counter() - start
        wav = np.concatenate(wavs).astype(np.float32) if wavs else np.zeros(0, dtype=np.float32)
        return SynthResult(
            wav=wav,
            sample_rate=self.sample_rate,
            tokens=[t for seg in segment_tokens for t in seg],
            segments=job.segments,
            seed=job.seed,
            timings=timings,
            segment_tokens=segment_tokens,
            weights=self.weights,
            sampling={
                **dataclasses.asdict(job.sampling),
                "min_token_text_ratio": job.request.min_token_text_ratio,
                "max_token_text_ratio": job.request.max_token_text_ratio,
            },
        )


def _prompt_of(features: PromptFeatures) -> FlowPrompt:
    return FlowPrompt(features.tokens, features.feat, features.embedding)


def _decode_row(job: _Job, text_tokens: torch.Tensor) -> DecodeRow:
    """The LLM input of one segment of ``job``."""
    request = job.request
    return DecodeRow(
        text=text_tokens,
        prompt_text=job.llm_prompt_text,
        prompt_speech=job.llm_prompt_speech,
        sampling=job.sampling,
        min_token_text_ratio=request.min_token_text_ratio,
        max_token_text_ratio=request.max_token_text_ratio,
        max_tokens=request.max_tokens,
        generator=job.llm_generator,
    )


def _short(segments: list[str], text_tokens: torch.Tensor, engine: SynthEngine) -> str:
    text = engine.text.tokenizer.decode(text_tokens.tolist()) or (segments[0] if segments else "")
    text = text.removeprefix(SYSTEM_PROMPT).strip()
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class _Failure:
    error: BaseException


def _in_background(source: Iterator[int]) -> Iterator[int]:
    """Iterate ``source`` in a worker thread, handing items over a queue; errors re-raise here.

    Leaving the loop early stops the worker after its current item.
    """
    items: queue.Queue[object] = queue.Queue()
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in source:
                if stop.is_set():
                    break
                items.put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            items.put(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            items.put(done)

    worker = threading.Thread(target=work, name="cosyml-llm-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]  # the queue holds the source's ints, the done sentinel and _Failure; the other two are handled above
    finally:
        stop.set()
        worker.join()


class SynthStream:
    """Iterator over the :class:`StreamChunk` s of one request; ``result`` is set when it is exhausted.

    Input errors surface on the first ``next()`` as one-line :class:`CosymlError` s.
    """

    def __init__(self, engine: SynthEngine, request: SynthRequest) -> None:
        self.engine = engine
        self.request = request
        self.result: SynthResult | None = None

    def __iter__(self) -> Iterator[StreamChunk]:
        engine = self.engine
        start = time.perf_counter()
        job = engine._prepare(self.request)
        stage = StageTimes()
        wavs: list[np.ndarray] = []
        segment_tokens: list[list[int]] = []
        index = 0
        last_segment = len(job.text_tokens) - 1
        for seg, text_tokens in enumerate(job.text_tokens):
            session = engine.token2wav.stream(job.flow_prompt, job.vocoder_generator)
            tokens: list[int] = []
            # The LLM decodes in a background thread while chunks render here (as upstream does): the
            # chunks depend only on the token sequence, so the audio is the same as decoding inline.
            for token in _in_background(engine._tokens(job, text_tokens)):
                tokens.append(token)
                for chunk in session.push(tokens):
                    if job.timings.first_chunk_s is None:
                        job.timings.first_chunk_s = time.perf_counter() - start
                    wavs.append(chunk.numpy())
                    yield StreamChunk(wavs[-1], seg, index, False)
                    index += 1
            chunk = session.finish(tokens)
            stage.flow_s += session.times.flow_s
            stage.hift_s += session.times.hift_s
            if job.timings.first_chunk_s is None:
                job.timings.first_chunk_s = time.perf_counter() - start
            wavs.append(chunk.numpy())
            segment_tokens.append(tokens)
            yield StreamChunk(wavs[-1], seg, index, seg == last_segment)
            index += 1
        self.result = engine._result(job, wavs, segment_tokens, stage, start)


__all__ = [
    "SynthEngine",
    "SynthInputError",
    "SynthRequest",
    "SynthResult",
    "SynthStream",
]
