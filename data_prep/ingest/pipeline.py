"""Orchestration: plan, resume, run workers, merge results, write the run outputs.

Layout of ``OUTPUT``::

    images/<patient>/<study>/<instance>_<frame>.png   keyed pseudonyms only
    dicom/<patient>/<study>/<instance>.dcm            with --keep-dicom
    manifest.csv      one row per written frame
    datalist.json     docs/design.md contract 1, "training" section
    quarantine.csv    one row per rejected input (by position) and per rejected frame
    report.json       counts by outcome and reason
    qc/index.html     the de-identification audit page (data_prep.ingest.report)
    .ingest_state/    key check, lock, and one result record per input

Resume and determinism: each input's result record is written by its worker
after its frames; the run outputs are *rebuilt* from the records, in input
position order, at the end of every run.  A rerun skips inputs whose record
matches the current options and input stamp, so a run killed with ``kill -9``
and resumed ends with the same bytes as an uninterrupted run, for any number
of workers.  Files under ``images/`` and ``dicom/`` that no record references
(left by a killed run or an options change) and temporaries are removed.
"""

from __future__ import annotations

import concurrent.futures as futures
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ultradino_monai.data.datalist import write_datalist
from ultradino_monai.utils.files import write_bytes_atomic, write_json_atomic

from .atomic import TEMP_PREFIX, sweep_temporaries
from .config import IngestConfig
from .discovery import InputItem, discover_inputs
from .keys import Pseudonymizer
from .ocr import OcrEngine
from .process import RECORD_FORMAT, STATE_DIR, WorkContext, process_item, record_path

logger = logging.getLogger(__name__)

__all__ = ["IngestError", "run_ingest", "MANIFEST_COLUMNS", "QUARANTINE_COLUMNS"]

MANIFEST_COLUMNS = (
    "image",
    "patient",
    "study",
    "series",
    "instance",
    "frame",
    "input_position",
    "sop_class",
    "manufacturer",
    "model",
    "device",
    "transfer_syntax",
    "photometric_source",
    "frames_in_source",
    "width",
    "height",
    "channels",
    "doppler",
    "pixel_policy",
    "region_type",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "spacing_row_mm",
    "spacing_col_mm",
    "study_date",
    "gestational_age_days",
    "burned_in_source",
    "pixels_verified",
    "ocr",
)
QUARANTINE_COLUMNS = ("position", "frame", "outcome", "reason")
OUTCOMES = ("converted", "quarantined", "skipped")
_OUTPUT_FOLDERS = ("images", "dicom")


class IngestError(RuntimeError):
    """The run cannot start (unusable folders, a different key, a concurrent run)."""


# -- worker process plumbing -----------------------------------------------------------------
_WORKER_CONTEXT: WorkContext | None = None


def _init_worker(context: WorkContext) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Die with the parent: a killed run must not leave workers writing into OUTPUT.
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() == 1:
        os._exit(1)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)


def _work(item: InputItem, position: int) -> dict[str, Any]:
    assert _WORKER_CONTEXT is not None
    return process_item(_WORKER_CONTEXT, item, position)


def _pool(context: WorkContext, workers: int) -> futures.ProcessPoolExecutor:
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(context,),
    )


def _run_isolated(context: WorkContext, item: InputItem, position: int) -> dict[str, Any]:
    """Retry one input alone after a worker crash; a second crash quarantines it."""
    with _pool(context, 1) as pool:
        try:
            return pool.submit(_work, item, position).result()
        except futures.process.BrokenProcessPool:
            logger.warning("input #%d crashed a worker twice; quarantined", position)
    return process_item(context, dataclasses.replace(item, issue=("quarantined", "worker_crash")), position)


def _execute(context: WorkContext, todo: list[tuple[int, InputItem]], workers: int, progress) -> None:
    if not todo:
        return
    if workers <= 0:
        for position, item in todo:
            process_item(context, item, position)
            progress.update(1)
        return
    crashed: list[tuple[int, InputItem]] = []
    queue = list(todo)
    window = max(4 * workers, 8)
    with _pool(context, workers) as pool:
        pending: dict[futures.Future, tuple[int, InputItem]] = {}
        while queue or pending:
            while queue and len(pending) < window:
                position, item = queue.pop(0)
                pending[pool.submit(_work, item, position)] = (position, item)
            done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for future in done:
                position, item = pending.pop(future)
                try:
                    future.result()
                except futures.process.BrokenProcessPool:
                    crashed.append((position, item))
                    continue
                progress.update(1)
            if crashed:
                # The pool is unusable after a crash; everything in flight is retried alone.
                crashed.extend(pending.values())
                pending.clear()
                break
    for position, item in sorted(crashed):
        _run_isolated(context, item, position)
        progress.update(1)
    remaining = [entry for entry in queue]
    if remaining:
        _execute(context, remaining, workers, progress)


# -- state ------------------------------------------------------------------------------------
def _check_folders(input_dir: Path, output_dir: Path) -> None:
    if not input_dir.exists():
        raise IngestError(f"INPUT folder not found: {input_dir}")
    if not input_dir.is_dir():
        raise IngestError(f"INPUT must be a folder: {input_dir}")
    inside = input_dir.resolve()
    out = output_dir.resolve()
    if out == inside or inside in out.parents:
        raise IngestError("OUTPUT must not be INPUT or inside INPUT (INPUT is never modified)")
    if out in inside.parents:
        raise IngestError("INPUT must not be inside OUTPUT")
    if output_dir.exists() and not output_dir.is_dir():
        raise IngestError(f"OUTPUT exists and is not a folder: {output_dir}")


def _lock(state: Path):
    import fcntl

    handle = open(state / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise IngestError("another ingest run is writing to this OUTPUT folder") from None
    return handle


def _check_key(state: Path, pseudonymizer: Pseudonymizer) -> None:
    path = state / "key_check.json"
    expected = pseudonymizer.key_check()
    if path.exists():
        try:
            stored = json.loads(path.read_text()).get("key_check")
        except (OSError, ValueError, AttributeError):
            stored = None
        if stored != expected:
            raise IngestError(
                "OUTPUT was written with a different secret key; use the original key or a new OUTPUT folder"
            )
        return
    write_bytes_atomic(path, (json.dumps({"key_check": expected}) + "\n").encode(), prefix=TEMP_PREFIX)


def _load_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


# -- merge ------------------------------------------------------------------------------------
def _resolve_duplicates(entries: list[dict[str, Any]]) -> None:
    """Same SOP instance from more than one input: keep the first if identical, else none."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["outcome"] == "converted" and entry["record"].get("instance"):
            groups[entry["record"]["instance"]].append(entry)
    for group in groups.values():
        if len(group) < 2:
            continue
        identical = all(e["record"]["outputs"] == group[0]["record"]["outputs"] for e in group[1:])
        for index, entry in enumerate(group):
            if identical and index == 0:
                continue
            entry["outcome"] = "skipped" if identical else "quarantined"
            entry["reason"] = "duplicate_instance" if identical else "conflicting_duplicate_instance"
            entry["frames"] = []
            entry["outputs"] = {}


def _csv_bytes(columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue().encode("utf-8")


def _sweep_outputs(output_dir: Path, referenced: set[str]) -> None:
    for folder in _OUTPUT_FOLDERS:
        root = output_dir / folder
        if not root.exists():
            continue
        for current, _dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames:
                full = Path(current) / name
                if full.relative_to(output_dir).as_posix() not in referenced:
                    full.unlink()
            if current != str(root) and not os.listdir(current):
                os.rmdir(current)


def _write_outputs(output_dir: Path, entries: list[dict[str, Any]], config: IngestConfig) -> dict[str, Any]:
    manifest_rows, quarantine_rows, training = [], [], []
    files = Counter()
    reasons: dict[str, Counter] = {"quarantined": Counter(), "skipped": Counter()}
    frame_reasons: Counter = Counter()
    strided = duplicates = 0
    for entry in entries:
        outcome, reason, position = entry["outcome"], entry["reason"], entry["position"]
        files[outcome] += 1
        record = entry["record"]
        if outcome != "converted":
            reasons[outcome][reason] += 1
            quarantine_rows.append({"position": position, "frame": "", "outcome": outcome, "reason": reason})
        for issue in record.get("frame_issues", []) if outcome in ("converted", "quarantined") else []:
            frame_reasons[issue["reason"]] += 1
            quarantine_rows.append(
                {"position": position, "frame": issue["frame"], "outcome": "quarantined", "reason": issue["reason"]}
            )
        if outcome != "converted":
            continue
        strided += record["counts"]["strided_out"]
        duplicates += record["counts"]["duplicates"]
        for frame in entry["frames"]:
            row = dict(frame, input_position=position)
            manifest_rows.append(row)
            spacing = None
            if frame.get("spacing_row_mm") is not None:
                spacing = [frame["spacing_row_mm"], frame["spacing_col_mm"]]
            training.append(
                {
                    "image": str(output_dir.resolve() / frame["image"]),
                    "patient": frame["patient"],
                    "study": frame["study"],
                    "series": frame["series"],
                    "instance": frame["instance"],
                    "frame": frame["frame"],
                    "doppler": bool(frame["doppler"]),
                    "spacing_mm": spacing,
                    "gestational_age_days": frame["gestational_age_days"],
                }
            )
    manifest, quarantine = _csv_bytes(MANIFEST_COLUMNS, manifest_rows), _csv_bytes(QUARANTINE_COLUMNS, quarantine_rows)
    write_bytes_atomic(output_dir / "manifest.csv", manifest, prefix=TEMP_PREFIX)
    write_bytes_atomic(output_dir / "quarantine.csv", quarantine, prefix=TEMP_PREFIX)
    write_datalist(output_dir / "datalist.json", {"training": training})
    report = {
        "format": 1,
        "files": {"found": len(entries), **{outcome: files.get(outcome, 0) for outcome in OUTCOMES}},
        "reasons": {key: dict(sorted(counter.items())) for key, counter in reasons.items()},
        "frames": {
            "written": len(manifest_rows),
            "doppler": sum(int(row["doppler"]) for row in manifest_rows),
            "quarantined": dict(sorted(frame_reasons.items())),
            "near_duplicates_removed": duplicates,
            "strided_out": strided,
        },
        "patients": len({row["patient"] for row in manifest_rows}),
        "studies": len({row["study"] for row in manifest_rows}),
        "instances": len({row["instance"] for row in manifest_rows}),
        "options": config.summary(),
    }
    write_json_atomic(output_dir / "report.json", report)
    return report


# -- entry point ------------------------------------------------------------------------------
def run_ingest(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    key: bytes,
    config: IngestConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Ingest every file under ``input_dir`` into ``output_dir``; returns the report.

    Args:
        input_dir: folder tree of exported files (never modified).
        output_dir: where images, manifest, datalist, quarantine list and report go.
        key: secret key bytes for all pseudonyms (see :func:`keys.load_secret_key`).
        config: run options; defaults to :class:`IngestConfig()`.
        workers: worker processes (``>= 1``); ``0`` processes in this process
            (no protection against decoder crashes; for debugging).
        progress: show a tqdm progress bar on stderr.
        allow_empty: go on (with a warning) when ``input_dir`` holds no file at all,
            writing an empty datalist and report; without it such a run is refused
            before anything is written, because an empty INPUT is almost always a
            wrong path or an unmounted share.

    Raises:
        IngestError: unusable folders, an empty ``input_dir`` (unless ``allow_empty``),
            a concurrent run, or a different key than the one OUTPUT was started with.
    """
    from tqdm import tqdm

    config = config or IngestConfig()
    if workers < 0:
        raise IngestError(f"--workers must be >= 0, got {workers}")
    if config.ocr_check and not OcrEngine.available():
        raise IngestError("--ocr-check needs rapidocr-onnxruntime (pip install 'ultradino-monai[ocr]')")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    _check_folders(input_dir, output_dir)
    # Discovery only reads INPUT; it runs before OUTPUT is touched so an empty INPUT leaves nothing behind.
    items = discover_inputs(input_dir, config.max_member_bytes)
    logger.info("found %d inputs", len(items))
    if not items:
        if not allow_empty:
            raise IngestError(
                f"INPUT holds no files: {input_dir} (wrong path or unmounted share?); "
                "pass --allow-empty to write an empty datalist and report anyway"
            )
        logger.warning("INPUT %s holds no files; writing an empty datalist and report (--allow-empty)", input_dir)
    state = output_dir / STATE_DIR
    (state / "records").mkdir(parents=True, exist_ok=True)
    lock = _lock(state)
    try:
        context = WorkContext(str(input_dir), str(output_dir), config, key)
        pseudonymizer = context.pseudonymizer
        _check_key(state, pseudonymizer)
        sweep_temporaries(output_dir)
        ids = [pseudonymizer.item_id(item.relpath, item.member) for item in items]

        def pending(positions: Iterable[int]) -> list[tuple[int, InputItem]]:
            todo = []
            for position in positions:
                record = _load_record(record_path(output_dir, ids[position]))
                fresh = (
                    record is not None
                    and record.get("config") == context.config_hash
                    and record.get("fingerprint") == pseudonymizer.fingerprint(items[position].stamp)
                )
                if not fresh:
                    todo.append((position, items[position]))
            return todo

        todo = pending(range(len(items)))
        with tqdm(
            total=len(items),
            initial=len(items) - len(todo),
            file=sys.stderr,
            unit="file",
            disable=not progress,
            desc="ingest",
        ) as bar:
            _execute(context, todo, workers, bar)
            # A converted record whose files vanished (deleted by hand) is redone once.
            records = [_load_record(record_path(output_dir, item_id)) for item_id in ids]
            instances = Counter(r.get("instance") for r in records if r and r["outcome"] == "converted")
            missing = [
                (position, items[position])
                for position, record in enumerate(records)
                if record is None
                or (
                    record["outcome"] == "converted"
                    and instances[record.get("instance")] == 1
                    and not all((output_dir / rel).is_file() for rel in record["outputs"])
                )
            ]
            if missing:
                bar.total += len(missing)
                _execute(context, missing, workers, bar)
                records = [_load_record(record_path(output_dir, item_id)) for item_id in ids]

        entries = []
        for position, record in enumerate(records):
            if record is None:  # cannot happen unless the state folder is unwritable
                raise IngestError("a result record could not be written; check free space and permissions on OUTPUT")
            entries.append(
                {
                    "position": position,
                    "record": record,
                    "outcome": record["outcome"],
                    "reason": record["reason"],
                    "frames": record["frames"],
                    "outputs": record["outputs"],
                }
            )
        _resolve_duplicates(entries)
        report = _write_outputs(output_dir, entries, config)
        referenced = {rel for entry in entries for rel in entry["outputs"]}
        _sweep_outputs(output_dir, referenced)
        wanted = {f"{item_id}.json" for item_id in ids}
        for stale in (state / "records").iterdir():
            if stale.name not in wanted:
                stale.unlink()
        # The audit page reads only the outputs just written, so a resumed run rewrites it to the same bytes.
        # (Imported here: `python -m data_prep.ingest.report` must not find the module already imported.)
        from .report import write_report

        write_report(output_dir)
        sweep_temporaries(output_dir)
        return report
    finally:
        lock.close()
