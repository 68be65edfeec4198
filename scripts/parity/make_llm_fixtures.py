"""Write golden fixtures for the LLM parity tests from upstream CosyVoice (run by hand, never from tests).

    /work/upstream/venv/bin/python scripts/parity/make_llm_fixtures.py \
        --upstream /work/upstream/CosyVoice --matcha /work/upstream/paimon/third_party/Matcha-TTS

Builds upstream ``Qwen2LM`` (v2) and ``CosyVoice3LM`` (v3) on a tiny Qwen2 config with random weights
(nothing is downloaded: ``Qwen2ForCausalLM.from_pretrained`` is replaced by a constructor), and records
in ``tests/fixtures/parity/llm/``:

- ``<v>_weights.pt``: the upstream state dict (official key layout, tied lm_head stored once);
- ``<v>_cases.pt``: fixed batches and, per forced stream mode (upstream's ``random.random`` patched),
  the decoder logits, targets, loss and accuracy; losses for other smoothing / normalisation settings;
- ``v2_inference.pt``: a seeded RAS decode (``torch.manual_seed``) with the per-step log-probabilities
  the sampler saw and the token ids it returned;
- ``meta.json``: dims, the upstream commit, library versions.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity" / "llm"

QWEN = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
)
SPEECH_TOKEN_SIZE = 120
SAMPLING = dict(top_p=0.8, top_k=25, win_size=10, tau_r=0.1)


def batch_for(version: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Three utterances: two eligible for bistream (Ls/Lt > 3, one with Lt a multiple of 5), one not."""
    text_len = torch.tensor([12, 10, 4], dtype=torch.int32)
    speech_len = torch.tensor([40, 33, 9], dtype=torch.int32)
    text = torch.randint(0, QWEN["vocab_size"], (3, 12), generator=g)
    speech = torch.randint(0, SPEECH_TOKEN_SIZE, (3, 40), generator=g)
    for i in range(3):  # the data pipeline pads with 0
        text[i, text_len[i] :] = 0
        speech[i, speech_len[i] :] = 0
    batch = {"text_token": text, "text_token_len": text_len, "speech_token": speech, "speech_token_len": speech_len}
    if version == "v3":
        instruct_len = torch.tensor([3, 0, 2], dtype=torch.int32)
        instruct = torch.randint(0, QWEN["vocab_size"], (3, 3), generator=g)
        for i in range(3):
            instruct[i, instruct_len[i] :] = 0
        batch.update(instruct_token=instruct, instruct_token_len=instruct_len)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default="/work/upstream/CosyVoice")
    parser.add_argument("--matcha", default="/work/upstream/paimon/third_party/Matcha-TTS")
    parser.add_argument(
        "--transformers-path",
        default="/work/upstream/tf4513",
        help="folder holding transformers==4.51.3 (upstream's pin), e.g. made with "
        "pip install --target DIR --no-deps transformers==4.51.3 'tokenizers<0.22' 'huggingface-hub<1.0'",
    )
    args = parser.parse_args()
    # Upstream pins transformers 4.51.3. Under transformers 5 its KV-cache decode step (a 2-D attention
    # mask covering only the new position) no longer equals causal attention over the cache, so the
    # golden decode must come from the pinned version.
    sys.path[:0] = [args.transformers_path, args.upstream, args.matcha]

    import cosyvoice.llm.llm as upstream_llm
    import transformers
    from cosyvoice.transformer.label_smoothing_loss import LabelSmoothingLoss
    from cosyvoice.utils.common import ras_sampling
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if transformers.__version__ != "4.51.3":
        raise SystemExit(f"transformers {transformers.__version__} found; pass --transformers-path with 4.51.3")

    config = Qwen2Config(**QWEN)
    upstream_llm.Qwen2ForCausalLM.from_pretrained = staticmethod(lambda _path: Qwen2ForCausalLM(config))
    commit = subprocess.run(
        ["git", "-C", args.upstream, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)

    def sampling_fn(weighted_scores, decoded_tokens, sampling):
        return ras_sampling(weighted_scores, decoded_tokens, sampling, **SAMPLING)

    for version, cls in (("v2", upstream_llm.Qwen2LM), ("v3", upstream_llm.CosyVoice3LM)):
        torch.manual_seed(1986 if version == "v2" else 1987)
        model = cls(
            llm_input_size=QWEN["hidden_size"],
            llm_output_size=QWEN["hidden_size"],
            speech_token_size=SPEECH_TOKEN_SIZE,
            llm=upstream_llm.Qwen2Encoder("unused"),
            sampling=sampling_fn,
            length_normalized_loss=True,
            lsm_weight=0,
            mix_ratio=[5, 15],
        ).eval()
        state = model.state_dict()
        assert state["llm.model.lm_head.weight"] is state["llm.model.model.embed_tokens.weight"] or torch.equal(
            state["llm.model.lm_head.weight"], state["llm.model.model.embed_tokens.weight"]
        )
        torch.save(state, OUT / f"{version}_weights.pt")

        g = torch.Generator().manual_seed(7)
        batch = batch_for(version, g)
        captured: dict[str, torch.Tensor] = {}
        decoder_forward = model.llm_decoder.forward

        def record_logits(x, _orig=decoder_forward, captured=captured):
            out = _orig(x)
            captured["logits"] = out.detach().clone()
            return out

        model.llm_decoder.forward = record_logits
        prepare = model.prepare_lm_input_target

        def record_target(*a, _orig=prepare, captured=captured, **kw):
            if len(a) == 8 and "instruct_token" not in kw:
                # v2 builds its empty instruct as torch.empty(0, 896) (hard-coded width); pass an empty
                # instruct of the tiny width instead, which takes the same code path otherwise.
                text_token = a[1]
                kw = dict(
                    instruct_token=text_token[:, :0],
                    instruct_token_emb=a[2][:, :0],
                    instruct_token_len=torch.zeros_like(a[3]),
                )
            target, inputs, lengths = _orig(*a, **kw)
            captured["target"], captured["lengths"] = target.clone(), lengths.clone()
            return target, inputs, lengths

        model.prepare_lm_input_target = record_target
        cases = {"batch": batch}
        for mode, draw in (("unistream", 0.9), ("bistream", 0.0)):
            original_random = random.random
            random.random = lambda d=draw: d
            try:
                with torch.no_grad():
                    out = model(dict(batch), torch.device("cpu"))
            finally:
                random.random = original_random
            logits, target = captured["logits"], captured["target"]
            losses = {}
            for smoothing in (0.0, 0.1):
                for normalize in (True, False):
                    crit = LabelSmoothingLoss(logits.size(-1), -1, smoothing, normalize)
                    losses[f"lsm{smoothing}_norm{int(normalize)}"] = crit(logits, target)
            cases[mode] = {
                "loss": out["loss"].detach(),
                "acc": out["acc"].detach(),
                "logits": logits,
                "target": target,
                "lengths": captured["lengths"],
                "losses": losses,
            }
            print(f"{version} {mode}: loss {out['loss'].item():.6f} acc {out['acc'].item():.4f} T {logits.shape[1]}")
        torch.save(cases, OUT / f"{version}_cases.pt")

        if version == "v2":
            # Seeded decode; record what the sampler saw (after the min-length eos mask) at each step.
            model.llm_decoder.forward = decoder_forward
            seen: list[torch.Tensor] = []

            def recording_sampling(weighted_scores, decoded_tokens, sampling, seen=seen):
                seen.append(weighted_scores.detach().clone())
                return sampling_fn(weighted_scores, decoded_tokens, sampling)

            model.sampling = recording_sampling
            text = torch.randint(0, QWEN["vocab_size"], (1, 6), generator=g)
            prompt_text = torch.randint(0, QWEN["vocab_size"], (1, 4), generator=g)
            prompt_speech = torch.randint(0, SPEECH_TOKEN_SIZE, (1, 10), generator=g)
            runs = []
            for seed, with_prompt in ((1234, True), (99, False)):
                seen.clear()
                torch.manual_seed(seed)
                pt = prompt_text if with_prompt else torch.zeros(1, 0, dtype=torch.long)
                ps = prompt_speech if with_prompt else torch.zeros(1, 0, dtype=torch.long)
                tokens = list(
                    model.inference(
                        text=text,
                        text_len=torch.tensor([text.shape[1]], dtype=torch.int32),
                        prompt_text=pt,
                        prompt_text_len=torch.tensor([pt.shape[1]], dtype=torch.int32),
                        prompt_speech_token=ps,
                        prompt_speech_token_len=torch.tensor([ps.shape[1]], dtype=torch.int32),
                        embedding=torch.zeros(1, 0),
                        sampling=25,
                        max_token_text_ratio=20,
                        min_token_text_ratio=2,
                    )
                )
                runs.append(
                    {
                        "seed": seed,
                        "text": text[0],
                        "prompt_text": pt[0],
                        "prompt_speech_token": ps[0],
                        "tokens": torch.tensor(tokens, dtype=torch.long),
                        "scores": torch.stack(seen),
                    }
                )
                print(f"v2 inference seed {seed}: {len(tokens)} tokens, {len(seen)} steps")
            torch.save({"sampling": SAMPLING, "runs": runs}, OUT / "v2_inference.pt")

    meta = {
        "upstream": "FunAudioLLM/CosyVoice",
        "upstream_commit": commit,
        "qwen_config": QWEN,
        "speech_token_size": SPEECH_TOKEN_SIZE,
        "mix_ratio": [5, 15],
        "sampling": SAMPLING,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "generator": "scripts/parity/make_llm_fixtures.py",
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
