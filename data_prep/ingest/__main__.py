"""Command line: ``python -m data_prep.ingest INPUT OUTPUT --secret-file KEYFILE [options]``.

Exit status 0 when the run completed (even with quarantined files), 2 with a
one-line message on unusable arguments (non-finite or out-of-range numbers
included), a missing/empty key file, an INPUT folder without any file (unless
``--allow-empty``), or an OUTPUT folder that belongs to another key or another
running ingest.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ultradino_monai.utils.cli import non_negative_int, positive_int
from ultradino_monai.utils.logs import setup_logging

from .config import BannerPolicy, ConfigError, IngestConfig
from .keys import SecretKeyError, load_secret_key
from .pipeline import IngestError, run_ingest


def _banner_policy(text: str) -> BannerPolicy:
    try:
        return BannerPolicy.parse(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.ingest",
        description="De-identify an ultrasound DICOM export into PNG frames, manifest.csv and datalist.json.",
    )
    parser.add_argument("input", metavar="INPUT", help="folder tree of exported files (never modified)")
    parser.add_argument("output", metavar="OUTPUT", help="output folder (created; resumable)")
    parser.add_argument(
        "--secret-file", required=True, metavar="KEYFILE", help="file holding the secret HMAC key (>= 16 bytes)"
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=1, help="worker processes (default 1; 0 = in-process)"
    )
    parser.add_argument("--frame-stride", type=positive_int, default=1, metavar="K", help="keep every K-th cine frame")
    parser.add_argument("--keep-dicom", action="store_true", help="also write de-identified DICOM under OUTPUT/dicom")
    parser.add_argument(
        "--ocr-check", action="store_true", help="OCR every written frame and quarantine frames with PHI-like text"
    )
    parser.add_argument(
        "--banner-policy",
        type=_banner_policy,
        default=BannerPolicy(),
        help="without a usable US region: 'quarantine' (default) or 'mask-top-N' (black out the top N rows)",
    )
    parser.add_argument(
        "--max-pixels", type=positive_int, default=IngestConfig.max_pixels, help="reject frames with more Rows*Columns"
    )
    parser.add_argument(
        "--max-frames", type=positive_int, default=IngestConfig.max_frames, help="reject files declaring more frames"
    )
    parser.add_argument(
        "--dedup-threshold",
        type=float,
        default=IngestConfig.dedup_threshold,
        help="mean abs. thumbnail difference (finite, <= 255) at or below which a frame is a near duplicate; "
        "< 0 disables",
    )
    parser.add_argument(
        "--doppler-fraction",
        type=float,
        default=IngestConfig.doppler_fraction,
        help="coloured-pixel fraction in (0, 1] that flags Doppler",
    )
    parser.add_argument(
        "--date-policy",
        choices=("shift", "drop"),
        default="shift",
        help="shift dates per patient (default) or drop them",
    )
    parser.add_argument(
        "--png-compress-level", type=int, default=IngestConfig.png_compress_level, help="PNG zlib level 0-9"
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept an INPUT folder without any file (writes an empty datalist and report); "
        "without it such a run exits with code 2 and writes nothing",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log per-input reason codes (positions only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    try:
        key = load_secret_key(args.secret_file)
        config = IngestConfig(
            frame_stride=args.frame_stride,
            keep_dicom=args.keep_dicom,
            ocr_check=args.ocr_check,
            banner_policy=args.banner_policy,
            max_pixels=args.max_pixels,
            max_frames=args.max_frames,
            dedup_threshold=args.dedup_threshold,
            doppler_fraction=args.doppler_fraction,
            date_policy=args.date_policy,
            png_compress_level=args.png_compress_level,
        )
        start = time.perf_counter()
        report = run_ingest(
            args.input,
            args.output,
            key,
            config,
            workers=args.workers,
            progress=not args.no_progress,
            allow_empty=args.allow_empty,
        )
    except (SecretKeyError, ConfigError, IngestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files, frames = report["files"], report["frames"]
    print(
        f"ingest: {files['found']} inputs -> {files['converted']} converted, {files['quarantined']} quarantined, "
        f"{files['skipped']} skipped; {frames['written']} frames written in {time.perf_counter() - start:.1f} s "
        f"-> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
