"""Settings of ``evaluate`` (the candidate grid, synthesis of the test sets, Whisper/CAM++ scoring).

A component's own typed configuration: the ``evaluate`` section of ``params.yaml`` maps onto it
(:mod:`cosyml.config` composes the sections and checks the value ranges; the field comments below are
the params file's comments). The suite itself takes a :class:`~cosyml.evaluation.suite.SuiteConfig`
that the commands build from this section and the rest of the params.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The default candidate grid's sources per part (best-probe is left out, said once, without probe scores).
GRID_SOURCES = ("base", "sft-avg", "best-probe")


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate``: score synthesised audio against test sets in the CV3-Eval layout."""

    test_sets: str = "eval"  # root folder of the test sets (our eval/ or a CV3-Eval clone's data/)
    subsets: list[str] = field(default_factory=list)  # subset paths under test_sets; empty = all
    whisper_model: str = ""  # local openai-whisper .pt; empty = prepare.whisper_model
    campplus_model: str = ""  # campplus.onnx for speaker similarity; empty = <model_dir>/campplus.onnx
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    batch_size: int = 16  # utterances per Whisper forward
    max_tokens: int = 0  # cap on decoded tokens per utterance; 0 = Whisper's default (224)
    bootstrap_resamples: int = 1000  # resamples behind each confidence interval
    ci_level: float = 0.95  # confidence level of the intervals
    seed: int = 1986  # bootstrap seed
    silence_dbfs: float = -60.0  # 20 ms frames below this are silence
    max_silence_ratio: float = 0.8  # flag outputs that are mostly silence
    clip_threshold: float = 0.999  # |sample| at or above this counts as clipped
    max_clipped_ratio: float = 0.01  # flag outputs with more clipped samples than this share
    min_duration_ratio: float = 0.5  # flag outputs shorter than this x the expected duration
    max_duration_ratio: float = 2.0  # flag outputs longer than this x the expected duration
    max_compression_ratio: float = 2.4  # flag Whisper transcripts that repeat themselves (hallucination)
    max_no_speech_prob: float = 0.6  # flag outputs Whisper thinks hold no speech
    # --- the candidate grid (`cosyml evaluate`): synthesise every test text with every candidate
    candidates: list[str] = field(default_factory=list)  # "llm=SRC,flow=SRC[,name=N]"; empty = the grid below
    llm_sources: list[str] = field(default_factory=lambda: list(GRID_SOURCES))  # base|sft-avg|epoch-K|last|best-probe
    flow_sources: list[str] = field(default_factory=lambda: list(GRID_SOURCES))  # the same for the flow
    exp_dir: str = "exp"  # sft-avg = <exp_dir>/<part>/<part>.pt; epoch-K = <exp_dir>/<part>/checkpoints/epoch_K.pt
    eval_dir: str = "exp/eval"  # per-candidate audio + caches, candidates.json, metrics.json, report.html
    sft_data: str = "data/prepared"  # speaker-SFT set built from <sft_data>/<sft_split>; "" = no SFT set
    sft_split: str = "dev"  # split of sft_data scored as the speaker set (held-out clips)
    speaker_file: str = "data/features/train/spk2embedding.pt"  # speaker embedding for sft synthesis and SS
    max_utts: int = 0  # usable utterances per subset (the first N); 0 = all
    synth_seed: int = 1986  # per-utterance seeds derive from it and the utt id: the same for every candidate
    synth_batch_size: int = 8  # requests decoded together by the LLM
    synth_max_tokens: int = 0  # cap on speech tokens per utterance (25 = 1 s); 0 = the ratio limits only
    min_token_text_ratio: float = 2.0  # speech tokens per text token, at least (upstream)
    max_token_text_ratio: float = 20.0  # ... and at most (upstream)
    top_p: float | None = None  # RAS sampling; None = the model yaml's value
    top_k: int | None = None  # None = the model yaml's value
    win_size: int | None = None  # None = the model yaml's value
    tau_r: float | None = None  # None = the model yaml's value
    report_max_utts: int = 4  # utterances per subset with audio players in report.html
