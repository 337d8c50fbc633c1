"""``mps-snapshot``: run the server, and talk to it from a shell.

mps-snapshot serve                                  # start on 127.0.0.1:50051, data in ./data
mps-snapshot put my.mp4 videos/my.mp4               # copy a file into the embedded store
mps-snapshot hash-secret                            # the access_key_hash to configure for a secret
mps-snapshot snapshot videos/my.mp4 --time 5000 --out shots/my.jpg
mps-snapshot submit request.json                    # MPS SubmitSnapshotJob JSON
mps-snapshot submit request.json --wait             # ... and follow it with a progress bar
mps-snapshot query JOB_ID ... | watch JOB_ID | cancel JOB_ID | health

The server's own commands (serve, put, hash-secret) live here; the rest are the client's
(``mps_snapshot_client.cli``), which imports nothing of the server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from mps_snapshot_client import cli as client_cli
from mps_snapshot_client.auth import derive_key
from mps_snapshot_client.progress import CopyProgress

#: ``put`` shows bytes copied for files at least this big.
PUT_PROGRESS_BYTES = 16 * 1024 * 1024


def _put(args: argparse.Namespace) -> int:
    from mps_snapshot_server.config import load
    from mps_snapshot_server.domain.keys import check_bucket, check_key
    from mps_snapshot_server.storage.local import LocalStore

    source = Path(args.file)
    if not source.is_file():
        raise SystemExit(f"error: {args.file}: no such file (give the path of a video to copy into the store)")
    settings = load(data_dir=Path(args.data_dir) if args.data_dir else None)
    bucket, key = client_cli.split_path(args.dest)
    check_bucket(bucket, "bucket")
    check_key(key, "key")
    store = LocalStore(settings.data_dir)
    size = source.stat().st_size
    if size >= PUT_PROGRESS_BYTES:
        with CopyProgress(sys.stderr, size, source.name) as copy:
            asyncio.run(store.put_file(bucket, key, source, "application/octet-stream", progress=copy.advance))
    else:
        asyncio.run(store.put_file(bucket, key, source, "application/octet-stream"))
    print(f"stored {store.path(bucket, key)}  (Bucket {bucket}, Object {quote(key, safe='')})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Imported here so client commands start without loading the server's modules.
    from mps_snapshot_server.app import App, configure_logging
    from mps_snapshot_server.config import load

    settings = load(
        Path(args.config) if args.config else None,
        listen=args.listen,
        http_listen=args.http_listen,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        log_format=args.log_format,
        database_url=args.database_url,
    )
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(App(settings).serve_forever())
    return 0


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--listen", help="HOST:PORT (env MPS_SNAPSHOT_LISTEN; default 127.0.0.1:50051)")
    serve.add_argument(
        "--http-listen",
        help="HOST:PORT of the HTTP listener: MPS's HTTP RPC for Alibaba Cloud's SDKs and CLI on /, "
        "Prometheus metrics on /metrics, the web console on /console/ (env MPS_SNAPSHOT_HTTP_LISTEN; default off)",
    )
    serve.add_argument("--data-dir", help="storage and database folder (env MPS_SNAPSHOT_DATA_DIR; default ./data)")
    serve.add_argument("--config", help="TOML settings file (env MPS_SNAPSHOT_CONFIG)")
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines (env MPS_SNAPSHOT_LOG_FORMAT)")
    serve.add_argument(
        "--database-url",
        help="PostgreSQL DSN shared by several replicas (env MPS_SNAPSHOT_DATABASE_URL; default: SQLite, one server)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mps-snapshot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    add_serve_options(sub.add_parser("serve", help="run the gRPC server"))
    hashing = sub.add_parser("hash-secret", help="print the access_key_hash to configure for a secret")
    hashing.add_argument("--secret", help="the secret (default: read from standard input)")
    put = sub.add_parser("put", help="copy a local file into the embedded store")
    put.add_argument("file")
    put.add_argument("dest", help="BUCKET/KEY")
    put.add_argument("--data-dir", help="as for serve")
    client_cli.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "put":
        return _put(args)
    if args.command == "hash-secret":
        secret = args.secret if args.secret is not None else sys.stdin.readline().rstrip("\n")
        print(derive_key(secret))
        return 0
    return client_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
