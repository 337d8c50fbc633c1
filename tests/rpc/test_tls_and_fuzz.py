"""Mutual TLS with principals from client certificates, and fuzzing of every request
field through the real server: only documented statuses, and it stays SERVING."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.app import App
from mps_snapshot_server.config import PrincipalConfig, StatementConfig, load


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


async def test_mutual_tls_identifies_the_principal(tmp_path: Path) -> None:
    ca_key = _key()
    ca = _cert("test-ca", ca_key, None, ca=True)
    server_key = _key()
    server_cert = _cert("mps-snapshot", server_key, (ca.subject, ca_key), ip="127.0.0.1")
    client_key = _key()
    client_cert = _cert("media-svc", client_key, (ca.subject, ca_key))
    rogue_ca_key = _key()
    rogue_ca = _cert("rogue-ca", rogue_ca_key, None, ca=True)
    rogue_key = _key()
    rogue_cert = _cert("media-svc", rogue_key, (rogue_ca.subject, rogue_ca_key))
    pem = serialization.Encoding.PEM
    settings_ = load(
        env={},
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        tls_cert_file=_write(tmp_path / "server.pem", server_cert.public_bytes(pem)),
        tls_key_file=_write(tmp_path / "server.key", _pem(server_key)),
        tls_client_ca_file=_write(tmp_path / "ca.pem", ca.public_bytes(pem)),
        principals=(
            PrincipalConfig(
                name="media", cert_cn="media-svc", statements=(StatementConfig("Allow", ("mts:Search*",)),)
            ),
        ),
    )
    app = App(settings_)
    await app.start()
    ca_pem = ca.public_bytes(pem)
    try:
        async with SnapshotClient(
            f"127.0.0.1:{app.port}",
            root_certificates=ca_pem,
            client_certificate=(_pem(client_key), client_cert.public_bytes(pem)),
        ) as c:
            assert (await c.search_pipelines()).total_count == 1
            with pytest.raises(MpsApiError) as caught:
                await c.add_pipeline("x")  # the certificate's principal may only search
            assert caught.value.code == "Forbidden.RAM"
        for cert in (None, (_pem(rogue_key), rogue_cert.public_bytes(pem))):
            async with SnapshotClient(
                f"127.0.0.1:{app.port}", root_certificates=ca_pem, client_certificate=cert, timeout=3
            ) as c:
                with pytest.raises(MpsApiError) as caught:
                    await c.search_pipelines()
                assert caught.value.status == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    finally:
        await app.stop(0)


DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "b-1", "{Count}.jpg", "a%2F..%2Fb", "%00", "-i", "http://127.0.0.1:1/x", "intra", "vtt", "Paused"]
    ),
)
ints = st.one_of(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.sampled_from([0, 1, 8, 4096, 10000]))
refs = st.builds(res.OSSFile, bucket=texts, location=texts, object=texts, role_arn=texts)
tiles = st.builds(
    res.TileOut,
    lines=ints,
    columns=ints,
    cell_width=ints,
    cell_height=ints,
    margin=ints,
    padding=ints,
    color=texts,
    is_keep_cell_pic=st.booleans(),
    cell_sel_step=ints,
)
configs = st.builds(
    res.SnapshotConfig,
    output_file=refs,
    time=st.integers(min_value=-(2**40), max_value=2**40),
    interval=ints,
    num=ints,
    frame_type=texts,
    width=ints,
    height=ints,
    tile_output_file=refs,
    tile_out=st.one_of(st.none(), tiles),
    format=texts,
    black_level=ints,
    pixel_black_threshold=ints,
    time_array=st.one_of(
        st.none(),
        st.builds(
            res.TimeArray,
            time_point_list=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=120),
        ),
    ),
)
submits = st.builds(
    sps.SubmitSnapshotJobRequest,
    input=st.one_of(st.none(), refs),
    snapshot_config=configs,
    user_data=texts,
    pipeline_id=texts,
)
queries = st.builds(
    sps.QuerySnapshotJobListRequest,
    snapshot_job_ids=st.lists(texts, max_size=12),
    next_page_token=texts,
    maximum_page_size=st.integers(min_value=-5, max_value=400),
    state=texts,
    pipeline_id=texts,
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=submits)
def test_fuzz_submit(request: sps.SubmitSnapshotJobRequest, fuzz_server: tuple[object, str]) -> None:
    status = _call(fuzz_server, "SubmitSnapshotJob", request)
    assert status in DOCUMENTED, (status, json_format.MessageToJson(request))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=queries)
def test_fuzz_query(request: sps.QuerySnapshotJobListRequest, fuzz_server: tuple[object, str]) -> None:
    status = _call(fuzz_server, "QuerySnapshotJobList", request)
    assert status in DOCUMENTED, (status, json_format.MessageToJson(request))


def _call(server: tuple[object, str], method: str, request: object) -> grpc.StatusCode:
    from mps_snapshot_client.api import snapshot_service_pb2_grpc as sps_grpc

    _, target = server
    with grpc.insecure_channel(target) as channel:
        stub = sps_grpc.SnapshotServiceStub(channel)
        try:
            getattr(stub, method)(request, timeout=10)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A server in its own process: hypothesis drives it synchronously from the test."""
    import os
    import re
    import subprocess
    import sys

    data = tmp_path_factory.mktemp("fuzz")
    (data / "b-1").mkdir()
    env = {
        **os.environ,
        "MPS_SNAPSHOT_DATA_DIR": str(data),
        "MPS_SNAPSHOT_LISTEN": "127.0.0.1:0",
        "MPS_SNAPSHOT_RATE_SUBMIT": "0",
        "MPS_SNAPSHOT_RATE_QUERY": "0",
    }
    proc = subprocess.Popen([sys.executable, "-m", "mps_snapshot_server"], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    port = 0
    for line in proc.stderr:
        if match := re.search(r"\(port (\d+)\)", line):
            port = int(match.group(1))
            break
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    yield proc, f"127.0.0.1:{port}"
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    proc.terminate()
    assert proc.wait(15) == 0
    assert status == health_pb2.HealthCheckResponse.SERVING  # still serving after the fuzzing
