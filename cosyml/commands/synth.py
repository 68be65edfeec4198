"""``cosyml synth``: synthesise speech with a model directory and any llm/flow weights.

One utterance (``--text`` + ``--out``), or a batch (``--text-file``: one text per line, or ``--requests``:
one JSON request per line) written as numbered wavs into ``--out-dir``. A run log beside the audio
(``<out-dir>/run.json``, or ``<stem>.run.json`` next to ``--out``) records every parameter used, the
weights and seeds (with ``--no-log-text``, without the texts); never environment variables. A bad request in a batch is
reported on one line and the others are still synthesised; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from cosyml.errors import CosymlError

_MODE_CHOICES = ("auto", "sft", "zero_shot", "cross_lingual", "instruct")
_PATH_KEYS = ("prompt_wav", "speaker_file", "llm", "flow")
_NAME_KEYS = ("name", "id")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="synthesise speech (sft, zero-shot, cross-lingual, instruct; batch or stream)",
        description=(
            "Synthesise with a CosyVoice2 or CosyVoice3 model directory. --llm/--flow swap in other weights (a training "
            "checkpoint, an averaged file, or 'base'). Mode 'auto' picks instruct when --instruct is given, "
            "zero_shot with --prompt-wav and --prompt-text, cross_lingual with --prompt-wav alone, else sft."
        ),
    )
    parser.add_argument("--model-dir", required=True, help="model directory (holds cosyvoice2.yaml or cosyvoice3.yaml)")
    parser.add_argument("--llm", default=None, help="llm weights: a .pt file, a checkpoint, a model dir, or 'base'")
    parser.add_argument("--flow", default=None, help="flow weights: a .pt file, a checkpoint, a model dir, or 'base'")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--mode", choices=_MODE_CHOICES, default="auto")
    parser.add_argument("--speaker", default=None, help="speaker name in spk2info.pt (or in --speaker-file)")
    parser.add_argument("--speaker-file", default=None, help="spk2info.pt / spk2embedding.pt / one embedding file")
    parser.add_argument("--prompt-wav", default=None, help="prompt audio (zero_shot, cross_lingual, instruct)")
    parser.add_argument("--prompt-text", default=None, help="transcript of --prompt-wav (zero_shot)")
    parser.add_argument("--instruct", default=None, help="instruction text (instruct mode), e.g. '用四川话说这句话'")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", default=None, help="the text to speak")
    source.add_argument("--text-file", default=None, help="a file with one text per line (batch)")
    source.add_argument("--requests", default=None, help="a JSONL file with one request object per line (batch)")
    parser.add_argument("--out", default=None, help="output wav for --text")
    parser.add_argument("--out-dir", default=None, help="output folder for batches (0001.wav, 0002.wav, ...)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (batch: item i gets seed + i)")
    parser.add_argument("--speed", type=float, default=1.0, help="speaking-rate factor (non-stream only)")
    parser.add_argument("--no-normalize", action="store_true", help="skip wetext text normalisation")
    parser.add_argument("--split-sentences", action="store_true", help="split long text into sentence segments")
    parser.add_argument("--stream", action="store_true", help="synthesise in streamed chunks (reports latency)")
    parser.add_argument("--top-p", type=float, default=None, help="RAS nucleus mass (default: the model yaml's)")
    parser.add_argument("--top-k", type=int, default=None, help="RAS nucleus size (default: the model yaml's)")
    parser.add_argument("--win-size", type=int, default=None, help="RAS repetition window (default: the yaml's)")
    parser.add_argument("--tau-r", type=float, default=None, help="RAS repetition threshold (default: the yaml's)")
    parser.add_argument("--min-ratio", type=float, default=None, help="min speech tokens per text token (2)")
    parser.add_argument("--max-ratio", type=float, default=None, help="max speech tokens per text token (20)")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap on speech tokens per segment (25 = 1 s)")
    parser.add_argument("--batch-size", type=int, default=8, help="requests decoded together by the LLM (batches)")
    parser.add_argument("--no-log-text", action="store_true", help="leave texts out of run.json")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------- requests


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Request fields set on the command line (None = not given)."""
    fields: dict[str, Any] = {
        "mode": None if args.mode == "auto" else args.mode,
        "speaker": args.speaker,
        "speaker_file": args.speaker_file,
        "prompt_wav": args.prompt_wav,
        "prompt_text": args.prompt_text,
        "instruct": args.instruct,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "win_size": args.win_size,
        "tau_r": args.tau_r,
        "min_token_text_ratio": args.min_ratio,
        "max_token_text_ratio": args.max_ratio,
        "max_tokens": args.max_tokens,
        "speed": args.speed,
        "normalize": not args.no_normalize,
        "split_sentences": args.split_sentences,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _build(fields: dict[str, Any], where: str):
    from cosyml.synth.request import SynthRequest, infer_mode

    fields = dict(fields)
    fields.setdefault("mode", infer_mode(fields.get("instruct"), fields.get("prompt_wav"), fields.get("prompt_text")))
    request = SynthRequest.from_dict(fields, where)
    request.validate()
    return request


def _resolve_paths(item: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in a JSONL request are taken relative to the JSONL file when they exist there."""
    out = dict(item)
    for key in _PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value != "base" and not Path(value).is_absolute() and (base / value).exists():
            out[key] = str(base / value)
    return out


def _read_batch(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any] | CosymlError]]:
    """(name, where, fields or the error of a malformed line) per batch item, in file order."""
    from cosyml.synth.errors import SynthParamError

    path = Path(args.text_file or args.requests)
    if not path.is_file():
        raise CosymlError(f"{path}: file not found; pass an existing {'text' if args.text_file else 'JSONL'} file")
    lines = _read_text_lines(path)
    items: list[tuple[str, str, dict[str, Any] | CosymlError]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        name = f"{len(items) + 1:04d}"
        if args.text_file:
            items.append((name, where, {"text": line.strip()}))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            items.append(
                (name, where, SynthParamError(f"{where}: not valid JSON ({exc.msg}); write one object per line"))
            )
            continue
        if not isinstance(item, dict):
            items.append((name, where, SynthParamError(f'{where}: expected a JSON object like {{"text": "..."}}')))
            continue
        for key in _NAME_KEYS:
            if key in item:
                custom = str(item.pop(key))
                if custom and all(c.isalnum() or c in "-_." for c in custom):
                    name = custom
        items.append((name, where, _resolve_paths(item, path.parent)))
    if not items:
        raise CosymlError(f"{path}: no requests in the file; write one per line")
    return items


def _read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a BOM is dropped); a binary or non-UTF-8 file is one line of error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CosymlError(
            f"{path}: cannot be read ({exc.strerror or exc}); check the path and its permissions"
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise CosymlError(
            f"{path}: a binary file, not text (NUL byte at offset {nul}); pass a UTF-8 text "
            "file with one request per line"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CosymlError(f"{path}: not UTF-8 text (byte offset {exc.start}); re-save the file as UTF-8") from None
    return text.splitlines()


def _check_writable(folder: Path, flag: str) -> None:
    """Create ``folder`` if needed and make sure a file can be created in it, before any model is loaded."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cosyml-write-test-"):
            pass
    except OSError as exc:
        raise CosymlError(
            f"{flag} {folder}: cannot write there ({exc.strerror or exc}); choose a writable folder"
        ) from None


# ---------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from cosyml.synth.engine import SynthEngine
    from cosyml.synth.request import MAX_SEED

    defaults = _defaults(args)
    single = args.text is not None
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise CosymlError(f"--seed must be from 0 to {MAX_SEED} (2**63 - 1), got {args.seed}")
    if single:
        out = Path(args.out) if args.out else (Path(args.out_dir) / "0001.wav" if args.out_dir else None)
        if out is None:
            raise CosymlError("--text needs --out FILE.wav (or --out-dir DIR)")
        if out.is_dir():
            raise CosymlError(f"--out {out}: is a folder; pass a file name such as {out / 'out.wav'}")
        _check_writable(out.parent, "--out")
        fields = {**defaults, "text": args.text}
        if args.seed is not None:
            fields["seed"] = args.seed
        request = _build(fields, "--text")
        jobs: list[tuple[str, str, Any, Path]] = [("0001", "--text", request, out)]
    else:
        if not args.out_dir:
            raise CosymlError("--text-file / --requests need --out-dir DIR for the numbered wavs")
        out_dir = Path(args.out_dir)
        jobs = []
        items = _read_batch(args)
        _check_writable(out_dir, "--out-dir")
        # Once one line names its own weights, every line names them, so no line inherits another's.
        per_line_weights = any(isinstance(f, dict) and ("llm" in f or "flow" in f) for _, _, f in items)
        weights = {"llm": args.llm or "base", "flow": args.flow or "base"} if per_line_weights else {}
        for index, (name, where, line) in enumerate(items):
            if isinstance(line, CosymlError):
                jobs.append((name, where, line, out_dir / f"{name}.wav"))
                continue
            merged = {**defaults, **weights, **line}
            if "seed" not in line and args.seed is not None:
                merged["seed"] = args.seed + index
            try:
                jobs.append((name, where, _build(merged, where), out_dir / f"{name}.wav"))
            except CosymlError as exc:
                jobs.append((name, where, exc, out_dir / f"{name}.wav"))

    if args.batch_size < 1:
        raise CosymlError(f"--batch-size must be at least 1, got {args.batch_size}")
    started = time.perf_counter()
    engine = SynthEngine.load(args.model_dir, device=args.device, llm=args.llm, flow=args.flow)
    load_s = time.perf_counter() - started
    base_weights = engine.weights
    records = _synthesize_all(engine, jobs, args, single)
    failed = [r for r in records if r["status"] != "ok"]
    # A batch owns its --out-dir: run.json. One --out file gets <stem>.run.json, so runs sharing a folder keep theirs.
    log_path = jobs[0][3].with_suffix(".run.json") if single else Path(args.out_dir) / "run.json"
    _write_run_json(log_path, args, engine, base_weights, records, load_s, time.perf_counter() - started)
    if single and failed:
        raise CosymlError(failed[0]["error"])
    if failed:
        print(
            f"cosyml: synth: {len(records) - len(failed)} of {len(records)} written, {len(failed)} failed "
            f"(details in {log_path})",
            file=sys.stderr,
        )
        return 1
    print(f"synth: {len(records)} wav(s) written; run log {log_path}")
    return 0


def _synthesize_all(
    engine, jobs: list[tuple[str, str, Any, Path]], args: argparse.Namespace, single: bool
) -> list[dict]:
    """Run every job (batched LLM decoding unless streaming) and return one run-log record per job."""
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    for name, where, item, out in jobs:
        record: dict[str, Any] = {"name": name, "where": where, "out": str(out)}
        if not isinstance(item, CosymlError):
            record["request"] = item.as_log_dict(include_text=not args.no_log_text)
        records.append(record)
    valid = [i for i, job in enumerate(jobs) if not isinstance(job[2], CosymlError)]
    for i, job in enumerate(jobs):
        if isinstance(job[2], CosymlError):
            _failed(records[i], job[2], single)
    bar = tqdm(total=len(valid), desc="synth", unit="utt", file=sys.stderr, disable=single or not sys.stderr.isatty())

    def done(k: int, item: Any, chunks: list[int] | None = None) -> None:
        i = valid[k]
        if isinstance(item, CosymlError):
            _failed(records[i], item, single)
        else:
            _written(records[i], item, Path(jobs[i][3]), args, chunks)
        bar.update(1)

    if args.stream:
        for k, i in enumerate(valid):
            try:
                stream = engine.stream(jobs[i][2])
                chunks = [c.wav.shape[0] for c in stream]
                done(k, stream.result, chunks)
            except CosymlError as exc:
                done(k, exc)
    else:
        engine.synthesize_batch([jobs[i][2] for i in valid], batch_size=args.batch_size, on_done=done)
    bar.close()
    return records


def _written(record: dict[str, Any], result, out: Path, args: argparse.Namespace, chunks: list[int] | None) -> None:
    from cosyml.audio import write_wav

    try:
        write_wav(out, result.wav, result.sample_rate)
    except OSError as exc:  # the folder was writable at the start; a full disk or a removed folder since
        _failed(record, CosymlError(f"{out}: cannot write the wav ({exc.strerror or exc})"), single=False)
        return
    if chunks is not None:
        record["stream_chunks"] = chunks
    t = result.timings
    record.update(
        status="ok",
        seed=result.seed,
        duration_s=round(result.duration_s, 3),
        num_tokens=len(result.tokens),
        rtf=round(result.rtf, 4),
        sampling=result.sampling,
        weights=result.weights,
        timings={k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(t).items()},
    )
    if not args.no_log_text:
        record["segments"] = result.segments
    latency = f", first chunk {t.first_chunk_s:.2f} s" if t.first_chunk_s is not None else ""
    print(f"{out}: {result.duration_s:.2f} s audio, {len(result.tokens)} tokens, RTF {result.rtf:.2f}{latency}")


def _failed(record: dict[str, Any], exc: CosymlError, single: bool) -> dict[str, Any]:
    record.update(status="error", error=str(exc))
    if not single:
        print(f"cosyml: error: {record['where']}: {exc}", file=sys.stderr)
    return record


def _write_run_json(
    path: Path, args: argparse.Namespace, engine, base_weights: dict, records: list[dict], load_s: float, total_s: float
) -> None:
    from cosyml import __version__

    hp = engine.hparams
    flags = {k: v for k, v in vars(args).items() if k != "func"}
    if args.no_log_text:
        for key in ("text", "prompt_text", "instruct"):
            flags.pop(key, None)
    payload = {
        "command": "cosyml synth",
        "cosyml_version": __version__,
        "model_dir": str(engine.model_dir.root.resolve()),
        "model_version": engine.model_dir.version,
        "device": str(engine.device),
        "weights": base_weights,
        "model_defaults": {
            "sample_rate": hp.sample_rate,
            "sampling": dataclasses.asdict(hp.sampling),
            "chunk_size": hp.chunk_size,
            "token_frame_rate": hp.token_frame_rate,
        },
        "flags": flags,
        "load_s": round(load_s, 3),
        "total_s": round(total_s, 3),
        "items": records,
        "summary": {
            "ok": sum(r["status"] == "ok" for r in records),
            "failed": sum(r["status"] != "ok" for r in records),
        },
    }
    from cosyml.fileio import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(payload, indent=1, ensure_ascii=False, default=str) + "\n")
    except OSError as exc:
        raise CosymlError(f"{path}: cannot write the run log ({exc.strerror or exc}); the audio was written") from None
