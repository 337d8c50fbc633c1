"""The client half of ``mps-snapshot``: talk to a running server from a shell.

The ``mps-snapshot`` command itself is the server's CLI (``mps_snapshot_server.cli``: serve,
put, hash-secret), which hands these commands here; ``python -m mps_snapshot_client`` runs
them alone, with nothing of the server imported.

mps-snapshot snapshot videos/my.mp4 --time 5000 --out shots/my.jpg
mps-snapshot submit request.json                    # MPS SubmitSnapshotJob JSON
mps-snapshot submit request.json --wait             # ... and follow it with a progress bar
mps-snapshot query JOB_ID ... | watch JOB_ID | cancel JOB_ID | health
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from google.protobuf import json_format

from mps_snapshot_client import mps_json
from mps_snapshot_client._client import DEFAULT_TARGET, SnapshotClient
from mps_snapshot_client.errors import MpsApiError
from mps_snapshot_client.progress import JobProgress


def split_path(path: str) -> tuple[str, str]:
    bucket, sep, key = path.partition("/")
    if not sep or not key:
        raise SystemExit(f"expected BUCKET/KEY, got {path!r}")
    return bucket, key


def _read_request(name: str) -> str:
    """The request JSON of ``submit``, checked before anything is sent, so a typo ends with
    one line saying where, not a traceback."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as err:
        raise SystemExit(f"error: {name}: {err.strerror or err}") from None
    try:
        json.loads(text)
    except ValueError as err:
        where = "standard input" if name == "-" else name
        raise SystemExit(f"error: {where} is not valid JSON: {err}") from None
    return text


def _check_input_path(path: str) -> None:
    """A local path given where BUCKET/KEY of the server's storage is wanted ends with one
    line saying so, before anything is sent."""
    hint = "upload it first with `mps-snapshot put FILE BUCKET/KEY` and pass that BUCKET/KEY"
    if path.startswith("data/"):
        rest = path.removeprefix("data/")
        raise SystemExit(
            f"error: {path}: the input is BUCKET/KEY of the server's storage, and data/ is the embedded "
            f"store's root, not a bucket: use {rest}"
        )
    if path.startswith("/") or Path(path).is_file():
        raise SystemExit(
            f"error: {path} looks like a local file: the input is BUCKET/KEY of the server's storage; {hint}"
        )


def format_error(err: MpsApiError) -> str:
    """An rpc error for stderr: the code and message, then each field violation not already in it."""
    lines = [f"error: {err.code}: {err.message}"]
    for v in err.violations:
        if v.description not in err.message:
            lines.append(f"  {v.field}: {v.description}")
    return "\n".join(lines)


def _print(message: object) -> None:
    print(mps_json.to_json(message))  # type: ignore[arg-type]


def _client(args: argparse.Namespace) -> SnapshotClient:
    if args.access_key_file and not args.access_key_id:
        try:
            doc = json.loads(Path(args.access_key_file).read_text())
            args.access_key_id, args.access_key_secret = doc["AccessKeyId"], doc["AccessKeySecret"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"error: cannot read the access key file {args.access_key_file}: {err}") from None
    ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    cert = None
    if args.tls_cert:
        cert = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
    return SnapshotClient(
        args.target,
        access_key_id=args.access_key_id,
        access_key_secret=args.access_key_secret,
        auth_mode=args.auth_mode,
        root_certificates=ca,
        client_certificate=cert,
    )


async def _client_command(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.command == "health":
            status = await client.health(timeout=args.timeout)
            print(status)
            return 0 if status == "SERVING" else 1
        if args.command == "snapshot":
            _check_input_path(args.input)
            bucket, key = split_path(args.input)
            out_bucket, out_key = split_path(args.out)
            job = await client.snapshot(
                bucket=bucket,
                object=quote(key, safe=""),
                output_bucket=out_bucket,
                output_object=quote(out_key, safe="{}"),
                time_ms=args.time,
                width=args.width,
                height=args.height,
                frame_type=args.frame_type,
                location=args.location,
                image_format=args.format,
                quality=args.quality,
                lossless=args.lossless or None,
                fit=args.fit,
                pad_color=args.pad_color,
                no_upscale=args.no_upscale or None,
                time_percent=args.time_percent,
                smart_pick_window_ms=args.smart_pick,
                tone_map=False if args.no_tone_map else None,
            )
            _print(job)
            return 0
        if args.command == "submit":
            response = await client.submit(json.loads(args.text))
            if not args.wait:
                _print(response)
                return 0
            # --wait: one JSON document on stdout, the final job; progress goes to stderr.
            final = response.snapshot_job
            if final.state not in ("Success", "Fail"):
                with JobProgress(sys.stderr) as progress:
                    final = await client.wait(final.id, on_event=lambda e: progress.update(e.snapshot_job))
            _print(final)
            return 0
        if args.command == "query":
            _print(await client.query(args.ids, state=args.state, pipeline_id=args.pipeline))
            return 0
        if args.command == "watch":
            if args.json:
                async for event in client.watch(args.id):
                    _print(event)
                return 0
            with JobProgress(sys.stderr) as progress:
                final = await client.wait(args.id, on_event=lambda e: progress.update(e.snapshot_job))
            _print(final)
            return 0
        if args.command == "cancel":
            _print(await client.cancel(args.id))
            return 0
    raise AssertionError(args.command)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the commands that talk to a server to ``sub`` (the server's CLI adds its own)."""
    target = os.environ.get("MPS_SNAPSHOT_TARGET", DEFAULT_TARGET)
    for name, help_text in (
        ("health", "check the server's health"),
        ("snapshot", "take one snapshot now"),
        ("submit", "submit MPS SubmitSnapshotJob JSON"),
        ("query", "show jobs"),
        ("watch", "stream a job's progress"),
        ("cancel", "cancel a job"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--target", default=target, help=f"server address (env MPS_SNAPSHOT_TARGET; {target})")
        cmd.add_argument(
            "--access-key-id",
            default=os.environ.get("MPS_SNAPSHOT_ACCESS_KEY_ID", ""),
            help="sign calls with this access key (env MPS_SNAPSHOT_ACCESS_KEY_ID)",
        )
        cmd.add_argument(
            "--access-key-secret",
            default=os.environ.get("MPS_SNAPSHOT_ACCESS_KEY_SECRET", ""),
            help="its secret (env MPS_SNAPSHOT_ACCESS_KEY_SECRET)",
        )
        cmd.add_argument(
            "--access-key-file",
            default=os.environ.get("MPS_SNAPSHOT_ACCESS_KEY_FILE", ""),
            help="JSON file with AccessKeyId and AccessKeySecret, e.g. the server's bootstrap_key_file "
            "(env MPS_SNAPSHOT_ACCESS_KEY_FILE)",
        )
        cmd.add_argument("--auth-mode", default="hmac", choices=["hmac", "bearer"])
        cmd.add_argument(
            "--tls-ca",
            default=os.environ.get("MPS_SNAPSHOT_TLS_CA", ""),
            help="CA certificate (PEM) to verify the server; turns TLS on",
        )
        cmd.add_argument("--tls-cert", default="", help="client certificate chain (PEM) for mutual TLS")
        cmd.add_argument("--tls-key", default="", help="client private key (PEM) for mutual TLS")
        if name == "health":
            cmd.add_argument("--timeout", type=float, default=3.0)
        elif name == "snapshot":
            cmd.add_argument("input", help="BUCKET/KEY of the video")
            cmd.add_argument("--out", required=True, help="BUCKET/KEY of the JPEG ({Count} etc. allowed)")
            cmd.add_argument("--time", type=int, default=0, help="media time in milliseconds")
            cmd.add_argument("--width", type=int)
            cmd.add_argument("--height", type=int)
            cmd.add_argument("--frame-type", default="", choices=["", "normal", "intra"])
            cmd.add_argument("--location", default="")
            # Beyond MPS (docs/api.md "Outputs beyond MPS").
            cmd.add_argument("--format", default="", help="jpg, png or webp (default: from --out's extension)")
            cmd.add_argument("--quality", type=int, help="1-100, for JPEG and lossy WebP")
            cmd.add_argument("--lossless", action="store_true", help="lossless WebP")
            cmd.add_argument("--fit", choices=["stretch", "preserve", "pad", "crop"], help="with --width and --height")
            cmd.add_argument("--pad-color", help="bars colour for --fit pad (default black)")
            cmd.add_argument("--no-upscale", action="store_true", help="never larger than the video")
            cmd.add_argument("--time-percent", type=float, help="time in percent of the duration (instead of --time)")
            cmd.add_argument("--smart-pick", type=int, metavar="WINDOW_MS", help="replace black/uniform/blurred frames")
            cmd.add_argument("--no-tone-map", action="store_true", help="keep HDR frames as decoded")
        elif name == "submit":
            cmd.add_argument("file", help="JSON file, or - for standard input")
            cmd.add_argument("--wait", action="store_true", help="follow an async job until it ends")
        elif name == "query":
            cmd.add_argument("ids", nargs="*")
            cmd.add_argument("--state", default="")
            cmd.add_argument("--pipeline", default="")
        else:
            cmd.add_argument("id")
            if name == "watch":
                cmd.add_argument("--json", action="store_true", help="print each event as JSON instead of progress")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mps-snapshot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


def run(args: argparse.Namespace) -> int:
    """Run one parsed client command; errors end with one line on stderr and exit code 2."""
    try:
        if args.command == "submit":
            args.text = _read_request(args.file)
        return asyncio.run(_client_command(args))
    except json_format.ParseError as err:
        print(f"error: the request is not a SubmitSnapshotJob request: {err}", file=sys.stderr)
        return 2
    except MpsApiError as err:
        print(format_error(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser().parse_args(argv))
