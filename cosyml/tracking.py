"""The one place that talks to MLflow.

A stage opens one run with :func:`stage_run`; inside it, call :meth:`StageRun.log_metrics`,
:meth:`StageRun.log_artifact` and friends. The experiment is ``cosyml/<speaker>``, tagged as MLflow's
"machine learning" kind (``mlflow.experimentKind=custom_model_development``), not GenAI. Runs are tagged
with the stage name, the git commit, a hash of the stage's parameters, the process (pid, host) and, where
known, the data version (the md5 DVC records for the stage's input).

The tracking URI comes only from the environment (``MLFLOW_TRACKING_URI``); by default it is a sqlite
store ``mlflow.db`` in the current directory with artifacts under ``mlruns/``. Set
``COSYML_TRACKING=off`` to run a stage without recording anything.

Outages. :func:`check_tracking` probes the store before a stage does any work (a TCP/HTTP probe with a
``COSYML_TRACKING_TIMEOUT`` second timeout, default 5) and fails with one line when it cannot be reached.
Once a run is open, a store that goes away never stops the stage: what cannot be logged is queued in
memory (at most :data:`MAX_PENDING` calls), retried when a probe (every ``COSYML_TRACKING_RETRY_S``
seconds, default 30) finds the store back and once more when the stage ends; what is still unsent then is
reported in one line per kind (metrics, params, tags, artifacts, run status). Files on local disk are the
stage's outputs and never depend on the store. Artifacts also wait when the server answers but the object
store behind it (``--artifacts-destination s3://...``) refuses them: they are retried at later logging
calls and at the end, and every artifact held for either reason is listed (local paths, not copies) in
``<pending_dir()>/<run_id>.json`` until it is uploaded; :func:`flush_pending` (``cosyml track flush``)
uploads the lists later. A run whose process died (kill -9, a lost machine) is
marked KILLED by the next stage that opens a run in the same experiment on the same host; SIGTERM and
Ctrl-C end the run as KILLED at once (after the store call in progress, if any, so that no sqlite
transaction is cut in half).

Secrets and paths. :func:`mask` is applied to every param, tag and run name and to every line printed
here: passwords in URLs (``scheme://user:pw@host``, ``?password=``/``token=``/... query values) and the
values of credential environment variables become ``***``; absolute paths inside the project root
(the git work tree of the current directory, else the current directory) become relative, paths under
the home folder start with ``~``. Keys that look like credentials are dropped from params altogether.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cosyml.errors import CosymlError

#: Keys whose values never reach MLflow, whatever a caller passes.
_SECRET_MARKERS = ("password", "passwd", "token", "secret", "api_key", "apikey", "credential")

#: MLflow's experiment-kind tag and the value of its "Machine learning" (model training) kind; without it
#: the MLflow 3 UI opens an experiment in its GenAI (traces, agents) mode.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: Logging calls held while the store is away; beyond this the newest are dropped (and counted).
MAX_PENDING = 20000

# `scheme://user:password@host` -> `scheme://user:***@host`
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@?#]*):([^@/\s?#]+)@")
# `?password=x`, `&access_token=x`, `;pwd=x` -> `...=***`
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:[^=&;#\s]*(?:password|passwd|pwd|token|secret|api_?key|credential|signature)[^=&;#\s]*)=)([^&;#\s]+)"
)


class TrackingError(CosymlError):
    """The tracking store cannot be reached or refused to open a run."""


def tracking_enabled() -> bool:
    return os.environ.get("COSYML_TRACKING", "on").lower() not in ("off", "0", "false", "no")


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def params_hash(params: Mapping[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _is_secret(key: str) -> bool:
    lower = key.lower()
    return any(m in lower for m in _SECRET_MARKERS)


def public_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a credential."""
    return {k: v for k, v in params.items() if not _is_secret(k)}


# ---------------------------------------------------------------------------------------------- masking


@lru_cache(maxsize=8)
def _project_root_of(cwd: str) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        )
        top = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        top = ""
    return top or cwd


def project_root() -> Path:
    """The git work tree holding the current directory, else the current directory."""
    return Path(_project_root_of(str(Path.cwd())))


def _env_secrets() -> list[str]:
    # Values of credential variables (MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, ..._TOKEN); short
    # values are skipped so that "1" or "on" are not masked everywhere.
    values = {v for k, v in os.environ.items() if _is_secret(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def mask(text: Any) -> str:
    """``text`` with credentials replaced by ``***`` and absolute paths made relative to the project root
    (or ``~``-relative under the home folder). Applied to everything this module logs or prints."""
    out = str(text)
    out = _USERINFO.sub(r"\1:***@", out)
    out = _QUERY_SECRET.sub(r"\1***", out)
    for value in _env_secrets():
        out = out.replace(value, "***")
    root = project_root()
    for variant in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
        if variant not in ("/", ""):
            out = _replace_path_prefix(out, variant, ".")
    home = str(Path.home())
    if home not in ("/", ""):  # after the project: a project under $HOME reads relative, not ~/...
        out = _replace_path_prefix(out, home, "~")
    return out


def _replace_path_prefix(text: str, prefix: str, repl: str) -> str:
    # `/root/proj/exp/llm` -> `exp/llm` (repl "."), `/root/proj` alone -> `.`; `/root/projX` stays.
    def sub(m: re.Match) -> str:
        rest = m.group(1)
        if rest:
            return rest.lstrip("/") if repl == "." else f"{repl}{rest}"
        return repl

    return re.sub(r"(?<![\w.\-])" + re.escape(prefix) + r"(/[^\s'\",;]*)?(?![\w.\-])", sub, text)


def _mask_values(data: Any) -> Any:
    if isinstance(data, str):
        return mask(data)
    if isinstance(data, Mapping):
        return {k: _mask_values(v) for k, v in data.items() if not (isinstance(k, str) and _is_secret(k))}
    if isinstance(data, list | tuple):
        return [_mask_values(v) for v in data]
    return data


def warn(message: str) -> None:
    """One masked line on stderr, prefixed ``cosyml: warning:``."""
    print(f"cosyml: warning: {mask(message)}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- probing


def _timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("COSYML_TRACKING_TIMEOUT", "5")))
    except ValueError:
        return 5.0


def probe(uri: str, timeout: float | None = None) -> str | None:
    """None when the store at ``uri`` answers, else a short reason. HTTP: any HTTP answer counts (a 401 or
    404 is a server that is there); databases: a TCP connection to the host; sqlite: the folder exists."""
    timeout = _timeout() if timeout is None else timeout
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    try:
        if scheme in ("http", "https"):
            base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
            try:
                with urllib.request.urlopen(base + "/health", timeout=timeout):
                    return None
            except urllib.error.HTTPError:
                return None
        if scheme.startswith(("postgresql", "mysql", "mssql")):
            default = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[scheme.split("+")[0]]
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default), timeout=timeout):
                return None
        if scheme == "sqlite":
            db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
            if db is not None and str(db) and not db.parent.is_dir():
                return f"folder {db.parent} does not exist"
    except urllib.error.URLError as exc:
        reason = exc.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError as exc:  # a malformed URL (bad port)
        return str(exc)
    return None


def check_tracking() -> None:
    """Fail with one line when tracking is on and the store cannot be reached (call before any work)."""
    if not tracking_enabled():
        return
    uri = default_tracking_uri()
    reason = probe(uri)
    if reason is not None:
        raise TrackingError(
            f"tracking store {mask(uri)} is unreachable ({mask(reason)}); start the server or fix "
            "MLFLOW_TRACKING_URI, or run without recording: COSYML_TRACKING=off"
        )


def _bounded_http_retries() -> None:
    # MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) stall a call for minutes when the
    # server is gone; the outbox retries later instead. A user's own settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


# ---------------------------------------------------------------------------------------------- outbox


_KIND_WORDS = {
    "metrics": "metric batches",
    "params": "param batches",
    "tags": "tag batches",
    "artifacts": "artifacts",
    "status": "run status",
}

#: The longest wait between two tries of an artifact store that refuses uploads, in multiples of
#: ``COSYML_TRACKING_RETRY_S``: a failing upload costs the stage seconds (the server's own S3 retries).
MAX_UPLOAD_BACKOFF = 16

FLUSH_COMMAND = "cosyml track flush"


def pending_dir() -> Path:
    """Where the lists of artifacts not yet uploaded are kept, one ``<run_id>.json`` per run:
    ``$COSYML_PENDING_DIR``, else ``$XDG_STATE_HOME/cosyml/pending-uploads`` (``~/.local/state/...``)."""
    configured = os.environ.get("COSYML_PENDING_DIR")
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cosyml" / "pending-uploads"


def _uri_key(uri: str) -> str:
    """``uri`` with its credentials masked but its paths kept: which store a pending list belongs to."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1:***@", uri))


def human_size(n: int) -> str:
    """``1234567`` -> ``1.2 MB`` (powers of 1000, as ``du --si``)."""
    size = float(n)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


@dataclass
class _Upload:
    """One artifact for the run: a local file or folder, a checkpoint whose weights are exported at upload
    time, or a short text. It is a record of paths (never a copy of the data), so what the store could
    not take is kept in a small list on disk and can be uploaded later (:func:`flush_pending`)."""

    how: str  # file | dir | weights | text
    dest: str  # the artifact's path in the run (a folder for `dir`)
    source: str = ""  # absolute local path (file, dir, weights); "" for text
    text: str = ""  # the content (text)
    info: dict[str, Any] | None = None  # weights: written beside as <stem>.json
    client: Any = field(default=None, repr=False, compare=False)
    run_id: str = field(default="", repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        return {"how": self.how, "dest": self.dest, "source": self.source, "text": self.text, "info": self.info}

    def on_disk(self) -> bool:
        return self.how == "text" or Path(self.source).exists()

    def size(self) -> int:
        """Bytes on disk (a weights entry counts its full checkpoint; the upload is about a third of it)."""
        if self.how == "text":
            return len(self.text.encode())
        path = Path(self.source)
        with contextlib.suppress(OSError):
            if path.is_dir():
                return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            return path.stat().st_size
        return 0

    def __call__(self) -> None:
        folder, _, name = self.dest.rpartition("/")
        if self.how == "text":
            self.client.log_text(self.run_id, self.text, self.dest)
            return
        source = Path(self.source)
        if not source.exists():  # removed (e.g. by checkpoint retention) before the store took it
            raise FileNotFoundError(f"{mask(source)} no longer exists")
        if self.how == "dir":
            self.client.log_artifacts(self.run_id, str(source), artifact_path=self.dest or None)
        elif self.how == "file":
            self.client.log_artifact(self.run_id, str(source), artifact_path=folder or None)
        else:
            import tempfile

            from cosyml.train.checkpoint import export_model_state

            with tempfile.TemporaryDirectory(prefix="cosyml-weights-") as tmp:
                export_model_state(source, Path(tmp) / name)
                self.client.log_artifact(self.run_id, str(Path(tmp) / name), artifact_path=folder or None)
                if self.info is not None:
                    self.client.log_dict(self.run_id, self.info, f"{folder}/{Path(name).stem}.json".lstrip("/"))


def _upload_error(exc: BaseException) -> str:
    """The useful part of a failed upload's message: MLflow's HTTP errors end with urllib3's cause
    (``(Caused by ResponseError('too many 500 error responses'))``) after a long URL."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    cause = re.search(r"\(Caused by (.+)\)\s*$", first)
    return (cause.group(1) if cause else first)[:300]


@dataclass
class _PendingList:
    """The run's artifacts that are not in the store yet, as ``<pending_dir>/<run_id>.json`` (rewritten
    atomically whenever it changes, removed once empty): it survives a kill -9 of the stage."""

    path: Path
    uri: str
    run_id: str
    uploads: dict[str, _Upload] = field(default_factory=dict)  # by dest: a newer best.pt replaces the older

    def add(self, upload: _Upload) -> None:
        if self.uploads.get(upload.dest) is upload:  # a retry that failed again: keep its place
            return
        self.uploads.pop(upload.dest, None)
        self.uploads[upload.dest] = upload
        self._save()

    def remove(self, upload: _Upload) -> None:
        if self.uploads.get(upload.dest) is upload:
            del self.uploads[upload.dest]
            self._save()

    def _save(self) -> None:
        from cosyml.fileio import atomic_write_json

        try:
            if self.uploads:
                record = {"tracking_uri": _uri_key(self.uri), "run_id": self.run_id}
                atomic_write_json({**record, "uploads": [u.record() for u in self.uploads.values()]}, self.path)
            elif self.path.exists():
                self.path.unlink()
        except OSError as exc:  # a full or read-only disk must not stop the stage either
            warn(f"tracking: could not write the list of artifacts to upload later, {self.path}: {exc.strerror}")


def _uploads_line(uploads: list[_Upload], why: str, listed: Path | None) -> str:
    """One line for the artifacts of a run that are not in the store: how many, how big, where on disk,
    and the command that uploads them later."""
    sources = [u.source for u in uploads if u.source]
    where = f"; they are kept in {mask(listed)}" if listed is not None else ""
    if sources:
        common = Path(os.path.commonpath(sources))
        if len(sources) == 1 and not common.is_dir():
            common = common.parent
        where = f"; they are on disk under {mask(common)}"
    names = ", ".join(u.dest for u in uploads[:3]) + (", ..." if len(uploads) > 3 else "")
    size = human_size(sum(u.size() for u in uploads))
    return (
        f"tracking: {len(uploads)} artifacts not logged ({size}: {names}): {why}{where}; "
        f"upload later with: {FLUSH_COMMAND}"
    )


@dataclass
class _Outbox:
    """Logging calls that could not reach the store, retried in order once a probe finds it back.

    Artifacts (:class:`_Upload`) also wait when the tracking server answers but its artifact store (an S3
    bucket behind ``--artifacts-destination``) does not take them: they are kept in order in ``backlog``,
    tried again at later logging calls (after ``retry_s``, doubling up to :data:`MAX_UPLOAD_BACKOFF` times
    that while the store keeps refusing) and once more at the end. Every artifact held for either reason is
    in the run's :class:`_PendingList` on disk until it is uploaded."""

    uri: str
    retry_s: float = field(default_factory=lambda: float(os.environ.get("COSYML_TRACKING_RETRY_S", "30")))
    pending: deque = field(default_factory=deque)  # (kind, label, call)
    dropped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)  # rejected by a reachable store: not retried
    offline: bool = False
    next_probe: float = 0.0
    told_offline: bool = False
    told_failed: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    backlog: dict = field(default_factory=dict)  # dest -> _Upload the artifact store did not take
    upload_wait: float = 0.0
    next_upload_try: float = 0.0
    told_stalled: bool = False
    pending_list: _PendingList | None = None

    def send(self, kind: str, label: str, call: Callable[[], None]) -> None:
        with self.lock:
            if self.offline and not self._reconnect():
                self._hold(kind, label, call)
                return
            if self.backlog:
                self._retry_uploads()
            if self.offline:  # the server itself went away during that retry
                self._hold(kind, label, call)
            elif isinstance(call, _Upload) and self.backlog:  # the store still refuses: keep the order, no wait
                self._stash(call, None)
            else:
                self._try(kind, label, call)

    def _try(self, kind: str, label: str, call: Callable[[], None]) -> bool:
        try:
            call()
        except Exception as exc:  # any failure of the store must leave the stage running
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            reason = probe(self.uri)
            if reason is not None:
                self.offline = True
                self.next_probe = time.monotonic() + self.retry_s
                if not self.told_offline:
                    self.told_offline = True
                    warn(
                        f"tracking store {self.uri} went away ({reason}); the stage goes on, logging is "
                        f"queued and retried every {self.retry_s:g} s"
                    )
                if isinstance(call, _Upload):
                    self.backlog.pop(call.dest, None)  # waits in `pending` with the rest, in order
                self._hold(kind, label, call)
            elif isinstance(call, _Upload) and call.on_disk():
                self._stash(call, _upload_error(exc))
            else:
                self.failed[kind] += 1
                if kind not in self.told_failed:
                    self.told_failed.add(kind)
                    warn(f"tracking: could not log {label} ({first[:300]}); the stage goes on")
            return False
        if isinstance(call, _Upload):
            self.backlog.pop(call.dest, None)
            if self.pending_list is not None:
                self.pending_list.remove(call)
        return True

    def _hold(self, kind: str, label: str, call: Callable[[], None]) -> None:
        if isinstance(call, _Upload) and self.pending_list is not None:
            self.pending_list.add(call)
        if len(self.pending) >= MAX_PENDING:
            self.dropped[kind] += 1
        else:
            self.pending.append((kind, label, call))

    def _stash(self, upload: _Upload, error: str | None) -> None:
        """The server answers but the artifact store did not take ``upload`` (``error``; None: not tried,
        the store is known to be refusing)."""
        if upload.dest not in self.backlog and len(self.backlog) >= MAX_PENDING:
            self.dropped["artifacts"] += 1
            return
        if self.backlog.get(upload.dest) is not upload:  # new, or a newer file for the same path: last
            self.backlog.pop(upload.dest, None)
            self.backlog[upload.dest] = upload
        if self.pending_list is not None:
            self.pending_list.add(upload)
        if error is None:
            return
        self.upload_wait = min(self.upload_wait * 2, MAX_UPLOAD_BACKOFF * self.retry_s) or self.retry_s
        self.next_upload_try = time.monotonic() + self.upload_wait
        if not self.told_stalled:
            self.told_stalled = True
            listed = f" (listed in {self.pending_list.path})" if self.pending_list is not None else ""
            warn(
                f"tracking: the artifact store behind {self.uri} did not take {upload.dest} ({error}); "
                f"the stage goes on, artifacts are kept on disk{listed} and retried later"
            )

    def _retry_uploads(self, force: bool = False) -> None:
        """Try the held artifacts in order; stop at the first the store still refuses."""
        if not force and time.monotonic() < self.next_upload_try:
            return
        for upload in list(self.backlog.values()):
            if not self._try("artifacts", upload.dest, upload):
                return
        self.upload_wait = 0.0  # all in: the next refusal waits retry_s again

    def _reconnect(self, force: bool = False) -> bool:
        if not force and time.monotonic() < self.next_probe:
            return False
        if probe(self.uri) is not None:
            self.next_probe = time.monotonic() + self.retry_s
            return False
        self.offline = False
        self._flush()
        return not self.offline

    def _flush(self) -> None:
        while self.pending and not self.offline:
            kind, label, call = self.pending.popleft()
            if isinstance(call, _Upload) and self.backlog:  # the server is back, its artifact store is not
                self._stash(call, None)
            elif not self._try(kind, label, call) and self.offline:
                self.pending.pop()  # _try queued it at the back: put it back first in line
                self.pending.appendleft((kind, label, call))

    def close(self) -> list[str]:
        """One last try; returns the lines saying what was not logged (one per kind)."""
        with self.lock:
            if self.offline:
                self._reconnect(force=True)
            if not self.offline and self.backlog:
                self._retry_uploads(force=True)
            lines = []
            held = [call for _, _, call in self.pending if isinstance(call, _Upload)]
            left = Counter(kind for kind, _, call in self.pending if not isinstance(call, _Upload)) + self.dropped
            for kind in _KIND_WORDS:
                if kind == "artifacts" and (held or self.backlog):
                    why = (
                        f"{self.uri} stayed unreachable"
                        if held
                        else f"the artifact store behind {self.uri} did not take them"
                    )
                    listed = self.pending_list.path if self.pending_list is not None else None
                    lines.append(_uploads_line(held + list(self.backlog.values()), why, listed))
                elif left[kind]:
                    names = [label for k, label, _ in self.pending if k == kind][:3]
                    more = f" ({', '.join(names)}{', ...' if left[kind] > len(names) else ''})" if names else ""
                    lines.append(
                        f"tracking: {left[kind]} {_KIND_WORDS[kind]} not logged to {self.uri}, which "
                        f"stayed unreachable{more}; the files on disk are complete"
                    )
                if self.failed[kind]:
                    lines.append(f"tracking: {self.failed[kind]} {_KIND_WORDS[kind]} refused by {self.uri}")
            return lines


@dataclass
class FlushResult:
    """What :func:`flush_pending` did for one run's pending list."""

    run_id: str
    uploaded: list[str]  # artifact paths now in the run
    uploaded_bytes: int
    left: list[str]  # still pending (the store refused the first of them: ``error``)
    gone: list[str]  # their local files no longer exist: dropped from the list
    error: str = ""
    other_store: str = ""  # the list belongs to another tracking store (masked): not touched


def flush_pending(dry_run: bool = False) -> list[FlushResult]:
    """Upload the artifacts that earlier stages could not (the lists in :func:`pending_dir`) to their runs
    in the store of ``MLFLOW_TRACKING_URI``, in order, stopping a run's list at the first refusal. Lists
    of another store are left alone. Uploaded entries leave the list; an empty list is removed."""
    import mlflow

    uri = default_tracking_uri()
    check_tracking()
    _bounded_http_retries()
    client = mlflow.MlflowClient(tracking_uri=uri)
    results = []
    for path in sorted(pending_dir().glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            run_id = str(record["run_id"])
            uploads = [
                _Upload(
                    str(u["how"]), str(u["dest"]), str(u.get("source") or ""), str(u.get("text") or ""), u.get("info")
                )
                for u in record["uploads"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CosymlError(f"{path}: not a cosyml pending-upload list ({exc}); move it away") from None
        result = FlushResult(run_id, [], 0, [u.dest for u in uploads], [])
        results.append(result)
        if record.get("tracking_uri") != _uri_key(uri):
            result.other_store = mask(record.get("tracking_uri", "?"))
            continue
        if dry_run:
            continue
        pending = _PendingList(path, uri, run_id, {u.dest: u for u in uploads})
        for upload in uploads:
            upload.client, upload.run_id = client, run_id
            if not upload.on_disk():
                result.gone.append(upload.dest)
                pending.remove(upload)
                continue
            try:
                upload()
            except Exception as exc:  # the store still refuses: keep the rest for the next flush
                result.error = _upload_error(exc)
                break
            result.uploaded.append(upload.dest)
            result.uploaded_bytes += upload.size()
            pending.remove(upload)
        result.left = list(pending.uploads)
    return results


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class StageRun:
    """A handle on the active MLflow run (or a no-op when tracking is off). Every call returns at once
    when the store is away (see the module docstring); the stage never fails because of logging."""

    active: bool
    run_id: str | None = None
    _outbox: _Outbox | None = None
    _client: Any = None

    def _send(self, kind: str, label: str, call: Callable[[], None]) -> None:
        if self.active and self._outbox is not None:
            with _store_call():
                self._outbox.send(kind, label, call)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # the time of the measurement, not of a delayed upload
        batch = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        self._send(
            "metrics", f"metrics at step {step or 0}", lambda: self._client.log_batch(self.run_id, metrics=batch)
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        clean = [Param(k, mask(v)[:6000]) for k, v in public_params(params).items()]
        for i in range(0, len(clean), 100):  # MLflow takes at most 100 params per batch
            chunk = clean[i : i + 100]
            self._send("params", "params", functools.partial(self._client.log_batch, self.run_id, params=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        clean = [RunTag(k, mask(v)[:8000]) for k, v in tags.items() if not _is_secret(k)]
        self._send("tags", "tags", lambda: self._client.log_batch(self.run_id, tags=clean))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not self.active or not path.exists():
            return
        if path.is_dir():
            upload = _Upload("dir", artifact_path or "", source=str(path.absolute()))
        else:
            dest = f"{artifact_path}/{path.name}" if artifact_path else path.name
            upload = _Upload("file", dest, source=str(path.absolute()))
        self._send_upload(upload)

    def log_weights(
        self, checkpoint: str | Path, artifact_path: str, name: str | None = None, info: Mapping[str, Any] | None = None
    ) -> None:
        """Log the model weights of a training checkpoint as ``<artifact_path>/<name>`` (default: the
        checkpoint's file name), an official-format state dict without optimizer, scaler or RNG state (a
        third of a full checkpoint's size with Adam): what averaging, assembling and synthesis read.
        Resuming uses the full checkpoints in the run folder on disk, never the store. ``info`` (epoch,
        CV loss, ...) goes beside it as ``<name without .pt>.json``."""
        checkpoint = Path(checkpoint)
        if not self.active or not checkpoint.exists():
            return
        dest = f"{artifact_path}/{name or checkpoint.name}"
        meta = _mask_values(dict(info)) if info else None
        self._send_upload(_Upload("weights", dest, source=str(checkpoint.absolute()), info=meta))

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._send_upload(_Upload("text", artifact_file, text=text))

    def _send_upload(self, upload: _Upload) -> None:
        upload.client, upload.run_id = self._client, self.run_id or ""
        self._send("artifacts", upload.dest, upload)

    def log_child_run(
        self,
        name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """One nested run under this run (e.g. an Optuna trial): params, metrics and tags, then closed."""
        if not self.active:
            return
        from mlflow.entities import Metric, Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        now = int(time.time() * 1000)
        tag_list = {
            **{k: mask(v) for k, v in (tags or {}).items() if not _is_secret(k)},
            MLFLOW_PARENT_RUN_ID: self.run_id,
        }

        def call() -> None:
            parent = self._client.get_run(self.run_id)
            child = self._client.create_run(parent.info.experiment_id, run_name=mask(name), tags=tag_list)
            self._client.log_batch(
                child.info.run_id,
                params=[Param(k, mask(v)[:6000]) for k, v in public_params(params).items()],
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            )
            self._client.set_terminated(child.info.run_id, "FINISHED")

        self._send("metrics", f"child run {name}", call)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        if self.active:
            clean = _mask_values(data)
            if artifact_file.endswith((".yaml", ".yml")):  # as MlflowClient.log_dict writes them
                import yaml

                text = yaml.dump(clean, indent=2, default_flow_style=False)
            else:
                text = json.dumps(clean, indent=2, default=str)
            self._send_upload(_Upload("text", artifact_file, text=text))


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _process_alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not (started and _process_start(pid) and _process_start(pid) != started)


def mark_abandoned_runs(client: Any, experiment_id: str) -> list[str]:
    """Set KILLED on this experiment's RUNNING runs whose process (recorded by pid, start time and host)
    no longer runs on this host: a kill -9 or a crash leaves no other trace. Returns their run ids."""
    host = socket.gethostname()
    marked = []
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`cosyml.host` = '{host}'",
        max_results=200,
    )
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags.get("cosyml.pid", ""))
        except ValueError:
            continue
        if pid == os.getpid() or _process_alive(pid, tags.get("cosyml.pid_start", "")):
            continue
        client.set_tag(run.info.run_id, "cosyml.end", f"process {pid} on {host} ended without closing the run (killed)")
        client.set_terminated(run.info.run_id, "KILLED")
        marked.append(run.info.run_id)
    return marked


def _command_line(stage: str) -> str:
    """``cosyml <args>`` when this process is the cosyml CLI (``cosyml``, ``python -m cosyml``), else
    ``cosyml <stage>`` (a library call, a test runner)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if argv0.name == "cosyml" or (argv0.name == "__main__.py" and argv0.parent.name == "cosyml"):
        return " ".join(["cosyml", *sys.argv[1:]])
    return f"cosyml {stage}"


def _use_experiment(name: str) -> str:
    """Select (creating if needed) the experiment, tagged as a model-training experiment; returns its id
    (artifact location: :func:`_artifact_location`)."""
    import mlflow

    if mlflow.get_experiment_by_name(name) is None:
        location = _artifact_location(mlflow.get_tracking_uri())
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # another process created it first
            mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    exp = mlflow.set_experiment(name)
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older cosyml or by hand
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


class _QuietSystemMetrics(logging.Filter):
    """MLflow's system-metrics sampler stops with a warning when the store goes away; the outbox says so."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.stopped = True
            return False
        return True


# A stage ends on SIGTERM or Ctrl-C, but not in the middle of a call into the tracking store: a sqlite
# read cut short by an exception keeps its connection (referenced from the traceback) holding the
# database's shared lock, so every later write of this process, the run's KILLED status among them, and
# the system-metrics thread's inserts wait out sqlite's busy timeout and fail with "database is locked".
# The signal is held while the main thread is inside a store call and acts when that call returns; a second
# signal does not wait.
_store_calls = 0
_held_signal: int | None = None


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _store_call() -> Iterator[None]:
    """Hold ending signals for the length of one store call (a no-op outside the main thread)."""
    global _store_calls, _held_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _store_calls += 1
    try:
        yield
    finally:
        _store_calls -= 1
        if _store_calls == 0 and _held_signal is not None:
            signum, _held_signal = _held_signal, None
            _raise_for(signum)


@contextlib.contextmanager
def _ending_signals() -> Iterator[None]:
    """SIGTERM ends the stage like Ctrl-C (the run is closed as KILLED), where a handler can be set; both
    wait for a store call in progress (see :func:`_store_call`)."""
    global _held_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        global _held_signal
        if _store_calls and _held_signal is None:
            _held_signal = signum
            return
        _raise_for(signum)

    # Ctrl-C only where it raises KeyboardInterrupt today (not where a parent set it to be ignored).
    ending = [signal.SIGTERM] + (
        [signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else []
    )
    previous = {sig: signal.signal(sig, handler) for sig in ending}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
        _held_signal = None


@contextlib.contextmanager
def stage_run(
    stage: str,
    speaker: str,
    params: Mapping[str, Any],
    data_version: str | None = None,
    run_name: str | None = None,
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """Open one MLflow run for one execution of ``stage`` (no-op when tracking is off).

    ``system_metrics`` samples CPU, memory, disk, network and GPU use into the run (``system/*``), for
    long stages such as training. An unreachable store raises :class:`TrackingError` before the body runs.
    """
    if not tracking_enabled():
        yield StageRun(active=False)
        return
    import mlflow

    uri = default_tracking_uri()
    check_tracking()
    _bounded_http_retries()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    tags = {
        "cosyml.stage": stage,
        "cosyml.speaker": speaker,
        "cosyml.params_hash": params_hash(params),
        "cosyml.pid": str(os.getpid()),
        "cosyml.pid_start": _process_start(os.getpid()),
        "cosyml.host": socket.gethostname(),
        "mlflow.source.git.commit": git_commit(),
        # MLflow would record the absolute path of the launcher; the command line says more.
        "mlflow.source.name": _command_line(stage),
    }
    if os.environ.get("DVC_STAGE"):
        tags["dvc.stage"] = os.environ["DVC_STAGE"]
    if data_version:
        tags["cosyml.data_version"] = data_version
    tags = {k: mask(v)[:8000] for k, v in tags.items()}
    quiet = _QuietSystemMetrics()
    monitor_log = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    try:
        if not os.environ.get("MLFLOW_RUN_ID"):
            # Under `mlflow run` the run already exists (in the experiment the user chose): join it.
            experiment_id = _use_experiment(f"cosyml/{speaker}")
            for run_id in mark_abandoned_runs(client, experiment_id):
                warn(f"tracking: run {run_id} was left RUNNING by a killed process; marked KILLED")
        monitor_log.addFilter(quiet)
        run = mlflow.start_run(run_name=mask(run_name or stage), tags=tags, log_system_metrics=system_metrics or None)
    except Exception as exc:  # the store answered the probe but cannot open a run
        monitor_log.removeFilter(quiet)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(
            f"tracking store {mask(uri)}: cannot open a run ({mask(first)[:300]}); check the server "
            "and MLFLOW_TRACKING_URI, or run without recording: COSYML_TRACKING=off"
        ) from None
    outbox = _Outbox(mask(uri))
    outbox.pending_list = _PendingList(pending_dir() / f"{run.info.run_id}.json", uri, run.info.run_id)
    handle = StageRun(active=True, run_id=run.info.run_id, _outbox=outbox, _client=client)
    status = "FAILED"
    try:
        with _ending_signals():
            handle.log_params(params)
            yield handle
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        _end_run(handle, outbox, status, quiet, monitor_log)


def _end_run(
    handle: StageRun, outbox: _Outbox, status: str, quiet: _QuietSystemMetrics, monitor_log: logging.Logger
) -> None:
    import mlflow
    from mlflow.tracking import fluent

    lines = outbox.close()
    try:
        if outbox.offline:
            raise ConnectionError("store unreachable")
        mlflow.end_run(status)  # pops the run first, then records the status
    except Exception:  # the next stage on this host marks the run (see mark_abandoned_runs)
        with contextlib.suppress(Exception):
            active = mlflow.active_run()
            if active is not None and active.info.run_id == handle.run_id:
                fluent._active_run_stack.get().pop()
        monitor = fluent.run_id_to_system_metrics_monitor.pop(handle.run_id, None)
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
        lines.append(
            f"tracking: run status {status} not recorded (the run shows RUNNING until the next cosyml "
            "stage on this host marks it KILLED)"
        )
    monitor_log.removeFilter(quiet)
    if quiet.stopped:
        lines.append("tracking: system metrics sampling stopped at the outage")
    for line in lines:
        warn(line)


# ---------------------------------------------------------------------------------------------- model registry
# The MLflow calls behind cosyml.registry (a separate block from the stage-run logging above): the registry
# client, the experiments that hold shared assets, runs logged once per content, aliases, logged models and
# their metrics. The registry modules never import mlflow; what they call on the client handle returned
# here is model-version bookkeeping (search, tag, alias, describe).


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a new experiment in a local sqlite store go to ``mlruns/`` beside the database file,
    not beside whatever the working directory is (None: the store's own default)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
    return None


def registry_client() -> Any:
    """An MlflowClient on the project's tracking URI (``MLFLOW_TRACKING_URI`` or ./mlflow.db), with the
    store's tables created; also sets the fluent API's URI (``mlflow models serve`` inherits it)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cosyml.errors import ConfigError

    if not tracking_enabled():
        raise ConfigError("COSYML_TRACKING=off: the model registry needs MLflow; unset COSYML_TRACKING")
    uri = default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_creation_lock(uri):
        mlc = MlflowClient(tracking_uri=uri)
        # Open (and on a fresh sqlite file create and migrate) the tracking and registry tables now,
        # under the lock: two processes migrating one new database at once crash one of them.
        mlc.search_experiments(max_results=1)
        mlc.search_registered_models(max_results=1)
    return mlc


@contextlib.contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """For a ``sqlite:///`` store: hold (waiting for it) an exclusive lock on ``.<db name>.lock`` beside
    the database while the block creates or migrates it; other stores need no lock (a server migrates
    its own database once, at start)."""
    import fcntl

    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "a+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield


def experiment_id(mlc: Any, name: str) -> str:
    """The id of experiment ``name``, created (artifacts as :func:`_artifact_location` says) if needed."""
    import mlflow

    exp = mlc.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlc.create_experiment(name, artifact_location=_artifact_location(mlflow.get_tracking_uri()))
    except mlflow.exceptions.MlflowException:  # created by another process meanwhile
        return mlc.get_experiment_by_name(name).experiment_id


def log_once(
    mlc: Any, experiment: str, match: dict[str, str], run_name: str, tags: dict[str, str], files: list[tuple[str, Path]]
) -> tuple[str, bool]:
    """The id of the complete run in ``experiment`` tagged with ``match``, or of a new one holding ``files``
    (``(artifact path, local file)`` pairs). Returns (run id, created). Only a complete upload is reused."""
    exp_id = experiment_id(mlc, experiment)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {**match, "cosyml.complete": "true"}.items())
    found = mlc.search_runs([exp_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id, False
    run_id = mlc.create_run(exp_id, run_name=run_name, tags={**match, **tags}).info.run_id
    try:
        for name, path in files:
            parent = str(Path(name).parent)
            mlc.log_artifact(run_id, str(path.resolve()), artifact_path=None if parent == "." else parent)
        mlc.set_tag(run_id, "cosyml.complete", "true")
    except BaseException:
        mlc.set_terminated(run_id, status="FAILED")
        raise
    mlc.set_terminated(run_id)
    return run_id, True


def logged_weights(mlc: Any, experiment: str, weights_sha256: str, artifact: str) -> tuple[str, str] | None:
    """(run id, file sha256) of a finished run of ``experiment`` tagged with ``weights_sha256`` (a state
    dict's content hash) whose ``artifact`` was uploaded; None when there is none (or it is still pending)."""
    exp = mlc.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = f"tags.`cosyml.weights_sha256` = '{weights_sha256}' and attributes.status = 'FINISHED'"
    for run in mlc.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"]):
        stored = run.data.tags.get("cosyml.file_sha256")
        folder = str(Path(artifact).parent)
        if stored and any(f.path == artifact for f in mlc.list_artifacts(run.info.run_id, folder)):
            return run.info.run_id, stored
    return None


def finished_runs(mlc: Any, experiment: str, max_results: int = 1000) -> list[Any]:
    """The FINISHED runs of ``experiment``, newest first ([] when there is no such experiment)."""
    exp = mlc.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(
        mlc.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )
    )


def ensure_registered_model(mlc: Any, name: str, tags: dict[str, str], description: str) -> None:
    """Create registered model ``name`` unless it exists (or another process creates it meanwhile)."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        mlc.create_registered_model(name, tags=tags, description=description)


def alias_version(mlc: Any, name: str, alias: str) -> Any | None:
    """The version ``alias`` points at, or None (no such alias or model)."""
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def registered_aliases(mlc: Any, name: str) -> dict[str, str] | None:
    """``{alias: version}`` of registered model ``name``, or None when there is no such model.
    (``search_model_versions`` leaves a version's aliases empty; the registered model holds them.)"""
    from mlflow.exceptions import MlflowException

    try:
        return {str(k): str(v) for k, v in (mlc.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        return None


def logged_model_metrics(mlc: Any, model_id: str) -> dict[str, float]:
    """The latest value of each metric of logged model ``model_id`` ({} when it cannot be read)."""
    from mlflow.exceptions import MlflowException

    try:
        metrics = mlc.get_logged_model(model_id).metrics or []
    except MlflowException:
        return {}
    latest: dict[str, float] = {}
    for metric in sorted(metrics, key=lambda m: (m.timestamp, m.step)):
        latest[metric.key] = metric.value
    return latest


def log_model_metrics(model_id: str, run_id: str | None, metrics: Mapping[str, float]) -> None:
    """Metrics of a logged model (its "Metrics" in the MLflow UI; the latest value of a key wins)."""
    import mlflow

    mlflow.log_metrics(dict(metrics), model_id=model_id, run_id=run_id)


def log_model_artifacts(model_id: str, folder: Path) -> None:
    """Upload the files of ``folder`` into logged model ``model_id``."""
    import mlflow

    mlflow.MlflowClient().log_model_artifacts(model_id, str(folder))


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    artifact_location: str


@contextlib.contextmanager
def logged_model(name: str, run_id: str | None, model_type: str, tags: Mapping[str, str]) -> Iterator[LoggedModel]:
    """A new logged model for the block to fill (:func:`log_model_artifacts`); READY when the block
    ends, FAILED when it raises."""
    import mlflow

    logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, model_type=model_type, tags=dict(tags))
    try:
        yield LoggedModel(logged.model_id, logged.artifact_location)
    except BaseException:
        mlflow.finalize_logged_model(logged.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(logged.model_id, "READY")


def register_model(model_uri: str, name: str, tags: Mapping[str, str]) -> Any:
    """A new version of registered model ``name`` from ``model_uri`` (``models:/<model_id>``)."""
    import mlflow

    return mlflow.register_model(model_uri, name, tags=dict(tags))


def version_model_id(version: Any) -> str | None:
    """The logged model behind a model version (MLflow 3 leaves ``model_id`` empty in listings; the
    source ``models:/<model_id>`` names it)."""
    model_id = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").strip("/")
    return model_id or None
