"""An S3-compatible server on loopback: moto's server mode stands in for MinIO/AWS here."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import boto3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_s3(bucket: str = "kdserve-test") -> Iterator[dict[str, str]]:
    """Run moto's threaded S3 server with one bucket; yield the KDSERVE_* settings for it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "KDSERVE_STORAGE_URL": f"s3://{bucket}/artifacts",
        "KDSERVE_S3_ENDPOINT_URL": endpoint,
        "KDSERVE_S3_ACCESS_KEY_ID": "test",
        "KDSERVE_S3_SECRET_ACCESS_KEY": "test",
        "KDSERVE_S3_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    try:
        yield env
    finally:
        server.stop()
