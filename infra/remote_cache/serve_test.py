import argparse
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2, remote_execution_pb2_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from buildgrid.server.app.settings.parser import load_config

from remote_cache.cas_layout import OBJECTS_SUBDIR, blob_files
from remote_cache.serve import PANTS_RPCS_PER_CLIENT, parse_size, parser, render_config


def test_sizes() -> None:
    assert parse_size("500M") == 500 << 20
    assert parse_size("50G") == 50 << 30
    assert parse_size("1.5 TiB") == int(1.5 * (1 << 40))
    assert parse_size("1024") == 1024
    with pytest.raises(argparse.ArgumentTypeError, match="write e.g. 500M"):
        parse_size("lots")


def test_the_rendered_config_is_one_buildgrid_accepts(tmp_path: Path) -> None:
    args = parser().parse_args(["--data", str(tmp_path / "cache"), "--address", "127.0.0.1:50999",
                                "--max-actions", "1000"])
    (tmp_path / "cache").mkdir()
    config = render_config(args, tmp_path / "buildgrid.yaml")
    settings = load_config(str(config))  # BuildGrid's own parser and schema
    text = config.read_text()
    assert "address: 127.0.0.1:50999" in text
    assert f"path: {tmp_path / 'cache'}" in text
    assert "max-cached-refs: 1000" in text
    # The disk CAS made its folders; the instance is the default one Pants asks for.
    assert (tmp_path / "cache" / OBJECTS_SUBDIR).is_dir()
    assert settings["instances"][0]["name"] == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(data: Path) -> Iterator[grpc.Channel]:
    port = _free_port()
    # This test's own interpreter and path: serve.py as `./pants run` starts it, with its defaults.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-m", "remote_cache.serve", "--data", str(data),
                             "--address", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=60)
            except grpc.FutureTimeoutError:
                proc.terminate()
                pytest.fail(f"serve did not start:\n{proc.communicate(timeout=10)[1].decode()[-3000:]}")
            yield channel
    finally:
        proc.terminate()  # our own child, by its PID
        proc.wait(timeout=20)


def test_by_default_it_serves_as_many_rpcs_at_once_as_a_pants_run_sends(tmp_path: Path) -> None:
    """BuildGrid serves as many RPCs at once as it has threads and refuses the rest; Pants, which
    sends up to PANTS_RPCS_PER_CLIENT at once, takes a refusal as a failed lookup and builds the
    process itself (seen: 17 of 32 lookups lost so, before the default was raised from 4 per core)."""
    blob = os.urandom(1 << 20)  # far over gRPC's flow-control window: a reader holds its stream open
    digest = remote_execution_pb2.Digest(hash=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))
    with _serving(tmp_path / "cache") as channel:
        cas = remote_execution_pb2_grpc.ContentAddressableStorageStub(channel)
        stored = cas.BatchUpdateBlobs(remote_execution_pb2.BatchUpdateBlobsRequest(
            requests=[remote_execution_pb2.BatchUpdateBlobsRequest.Request(digest=digest, data=blob)]))
        assert [r.status.code for r in stored.responses] == [0]
        # Where cas_layout says (eviction and the tests read the CAS by it).
        assert [p.relative_to(tmp_path / "cache" / OBJECTS_SUBDIR).parts for p in blob_files(tmp_path / "cache")] \
            == [(digest.hash[:2], digest.hash[2:])]
        reads = bytestream_pb2_grpc.ByteStreamStub(channel)
        name = f"blobs/{digest.hash}/{digest.size_bytes}"
        # Every stream takes its first chunk and then waits: all are open on the server at once.
        streams = [reads.Read(bytestream_pb2.ReadRequest(resource_name=name)) for _ in range(PANTS_RPCS_PER_CLIENT)]
        refused = []
        for stream in streams:
            try:
                assert next(stream).data
            except grpc.RpcError as e:
                refused.append(e.code())
        for stream in streams:
            stream.cancel()
    assert refused == [], f"{len(refused)} of {PANTS_RPCS_PER_CLIENT} reads refused: {set(refused)}"
