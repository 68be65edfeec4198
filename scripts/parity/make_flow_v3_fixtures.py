"""Write the CosyVoice3 flow parity fixtures (tests/fixtures/parity/flow_v3/) from upstream CosyVoice.

Run by hand, never from tests, with the upstream venv (it needs hyperpyyaml, omegaconf, einops and
x-transformers for upstream's DiT):

    /work/upstream/venv/bin/python scripts/parity/make_flow_v3_fixtures.py \
        --upstream /work/upstream/CosyVoice --matcha /work/upstream/paimon/third_party/Matcha-TTS \
        --out tests/fixtures/parity/flow_v3

Model: upstream ``CausalMaskedDiffWithDiT`` built by HyperPyYAML from ``tiny_flow_v3.yaml`` (the official
yaml format; DiT dim 64, depth 2, 2 heads of 32, chunk 8 frames).

Weights: made by ``hashed_weights`` of ``make_flow_fixtures.py`` (platform-independent, rebuilt by the
test and checked against per-key sums in ``meta.json``), except the RoPE ``inv_freq`` buffer, which
keeps upstream's computed value (stored in ``io.pt``). The upstream state-dict layout (key order and
shapes) is stored too, so the test can prove strict loading works both ways.

Randomness: upstream ``forward`` draws with ``random.random``/``random.randint`` (streaming flag, prompt
lengths) and ``torch.rand``/``torch.randn_like`` (t, noise, CFG dropout); those calls are replaced by
scripted values, which are stored, exactly as for the v2 fixtures.

Outputs: ``io.pt`` (inputs, scripted draws, outputs; ``torch.load(weights_only=True)``), ``meta.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent
INV_FREQ_KEY = "decoder.estimator.rotary_embed.inv_freq"


def _v2_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_flow_fixtures", HERE / "make_flow_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=Path("/work/upstream/CosyVoice"))
    parser.add_argument("--matcha", type=Path, default=Path("/work/upstream/paimon/third_party/Matcha-TTS"))
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "tests/fixtures/parity/flow_v3")
    args = parser.parse_args()
    sys.path[:0] = [str(args.upstream), str(args.matcha)]
    v2 = _v2_script()

    import cosyvoice.flow.flow as upstream_flow_module
    import x_transformers
    from hyperpyyaml import load_hyperpyyaml

    with (args.out / "tiny_flow_v3.yaml").open() as handle:
        conf = load_hyperpyyaml(handle)
    flow = conf["flow"]
    layout = [(k, list(v.shape)) for k, v in flow.state_dict().items()]
    inv_freq = flow.state_dict()[INV_FREQ_KEY].clone()
    weights = v2.hashed_weights({k: tuple(s) for k, s in layout if k != INV_FREQ_KEY})
    flow.load_state_dict({**weights, INV_FREQ_KEY: inv_freq}, strict=True)
    flow.eval()
    estimator = flow.decoder.estimator

    gen = torch.Generator().manual_seed(20250301)
    vocab = flow.vocab_size
    io: dict[str, torch.Tensor] = {"inv_freq": inv_freq}

    # ---- the estimator alone: padded batch (19 and 13 frames), odd length, partial last chunk
    x = torch.randn(2, 80, 19, generator=gen)
    mu = torch.randn(2, 80, 19, generator=gen)
    cond = torch.randn(2, 80, 19, generator=gen)
    spks = torch.randn(2, 80, generator=gen)
    t = torch.tensor([0.25, 0.9])
    est_mask = (torch.arange(19).unsqueeze(0) < torch.tensor([[19], [13]])).float().unsqueeze(1)
    io.update({"est.x": x, "est.mu": mu, "est.cond": cond, "est.spks": spks, "est.t": t, "est.mask": est_mask})
    with torch.no_grad():
        for streaming in (False, True):
            out = estimator(x, est_mask, mu, t, spks, cond, streaming=streaming)
            io[f"est.out.streaming{int(streaming)}"] = out
            print(f"estimator streaming={streaming}: |out| max {out.abs().max().item():.3f}")
        # a 0-d time, as the sampler passes for batch 1 in some callers
        io["est.out.scalar_t"] = estimator(x[:1], est_mask[:1], mu[:1], torch.tensor(0.5), spks[:1], cond[:1])

    # ---- a padded training batch: 10 and 7 tokens
    token_len = torch.tensor([10, 7])
    speech_token = torch.randint(0, vocab, (2, 10), generator=gen)
    speech_token[1, 7:] = 0
    feat_len = 2 * token_len
    speech_feat = torch.randn(2, 20, 80, generator=gen) * 2.0 - 6.0
    speech_feat[1, 14:] = 0.0
    embedding = torch.randn(2, 192, generator=gen)
    batch = {
        "speech_token": speech_token,
        "speech_token_len": token_len,
        "speech_feat": speech_feat,
        "speech_feat_len": feat_len,
        "embedding": embedding,
    }
    io.update({f"batch.{k}": v for k, v in batch.items()})
    with torch.no_grad():
        mask = (torch.arange(10).unsqueeze(0) < token_len.unsqueeze(1)).float().unsqueeze(-1)
        io["pre_lookahead.h"] = flow.pre_lookahead_layer(flow.input_embedding(speech_token) * mask)

    # ---- training loss with scripted draws; case = (random values, t, cfg draws)
    cases = [
        # streaming no (0.7 >= 0.5); utt0 gets a prompt (0.9 -> randint 5); utt1 none (0.1 < 0.5)
        ([0.7, 0.9, 5, 0.1], torch.tensor([0.3, 0.85]), torch.tensor([0.9, 0.1])),
        # streaming yes (0.2); utt0 none; utt1 prompt of 4 frames; both keep their conditions
        ([0.2, 0.3, 0.6, 4], torch.tensor([0.05, 0.6]), torch.tensor([0.5, 0.7])),
    ]
    for i, (script, t_case, cfg_draw) in enumerate(cases):
        noise = torch.randn(2, 80, 20, generator=gen)
        upstream_flow_module.random = v2._Scripted(script)
        with torch.no_grad(), v2._scripted_torch(t_case, noise, cfg_draw):
            loss = flow(dict(batch), torch.device("cpu"))["loss"]
        streaming = script[0] < 0.5
        prompt = []
        rest = script[1:]
        for _ in range(2):
            value = rest.pop(0)
            prompt.append(0 if value < 0.5 else int(rest.pop(0)))
        io[f"loss{i}.streaming"] = torch.tensor(streaming)
        io[f"loss{i}.prompt_frames"] = torch.tensor(prompt)
        io[f"loss{i}.t"] = t_case
        io[f"loss{i}.noise"] = noise
        io[f"loss{i}.cfg_keep"] = cfg_draw > 0.2
        io[f"loss{i}.loss"] = loss.detach()
        print(f"loss case {i}: streaming={streaming} prompt={prompt} loss={loss.item():.6f}")

    # ---- inference (10 Euler steps, upstream's fixed noise): 6 prompt tokens (12 frames) + 8 new tokens
    prompt_token = torch.randint(0, vocab, (1, 6), generator=gen)
    prompt_feat = torch.randn(1, 12, 80, generator=gen) * 2.0 - 6.0
    token = torch.randint(0, vocab, (1, 8), generator=gen)
    spk = torch.randn(1, 192, generator=gen)
    io.update(
        {
            "infer.token": token,
            "infer.prompt_token": prompt_token,
            "infer.prompt_feat": prompt_feat,
            "infer.embedding": spk,
        }
    )
    for streaming, finalize in ((False, True), (True, False), (True, True)):
        mel, _ = flow.inference(
            token,
            torch.tensor([8]),
            prompt_token,
            torch.tensor([6]),
            prompt_feat,
            torch.tensor([12]),
            spk,
            streaming=streaming,
            finalize=finalize,
        )
        io[f"infer.mel.streaming{int(streaming)}.finalize{int(finalize)}"] = mel.clone()
        print(f"inference streaming={streaming} finalize={finalize}: mel {tuple(mel.shape)}")
    mel, _ = flow.inference(
        token,
        torch.tensor([8]),
        prompt_token[:, :0],
        torch.tensor([0]),
        prompt_feat[:, :0],
        torch.tensor([0]),
        spk,
        streaming=False,
        finalize=True,
    )
    io["infer.mel.noprompt"] = mel.clone()
    print(f"inference without prompt: mel {tuple(mel.shape)}")

    torch.save(io, args.out / "io.pt")
    meta = {
        "upstream_commit": v2._git_commit(args.upstream),
        "torch": torch.__version__,
        "x_transformers": getattr(x_transformers, "__version__", "unknown"),
        "yaml": "tiny_flow_v3.yaml",
        "weights": "make_flow_fixtures.hashed_weights(state-dict shapes, salt 0); inv_freq from upstream (io.pt)",
        "weight_sums": {k: float(v.double().sum()) for k, v in weights.items()},
        "state_dict_layout": layout,
        "num_parameters": sum(v.numel() for v in weights.values()),
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out / 'io.pt'} ({(args.out / 'io.pt').stat().st_size} bytes) and meta.json")


if __name__ == "__main__":
    main()
