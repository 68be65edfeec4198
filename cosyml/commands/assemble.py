"""``cosyml assemble``: a fine-tuned model directory = base directory + chosen llm/flow + spk2info.pt."""

from __future__ import annotations

import argparse

from cosyml.commands._common import add_params_arguments, resolve_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assemble", help="build a fine-tuned model directory from a base one and chosen weights")
    p.add_argument("--base", default=None, help="base model directory (default: params model_dir)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--llm", default=None, help="llm weights (llm.pt, an averaged file or a checkpoint); default: base")
    p.add_argument("--flow", default=None, help="flow weights; default: base")
    p.add_argument("--spk2embedding", required=True, help="spk2embedding.pt from `cosyml extract` (train split)")
    p.add_argument("--speaker", default=None, help="speaker id (default: prepare.speaker)")
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.tracking import stage_run
    from cosyml.train.assemble import assemble

    params = resolve_params(args, {"model_dir": args.base, "prepare.speaker": args.speaker})
    logged = {"model_dir": params.model_dir, "out": args.out, "llm": args.llm or "base", "flow": args.flow or "base"}
    with stage_run("assemble", params.prepare.speaker, logged) as run_:
        result = assemble(
            params.model_dir, args.out, params.prepare.speaker, args.spk2embedding, llm=args.llm, flow=args.flow
        )
        run_.log_artifact(result.model_dir / "spk2info.pt")
    print(
        f"assembled {result.model_dir}: llm={result.llm_source} flow={result.flow_source} speaker={result.speakers[0]}"
    )
    return 0
