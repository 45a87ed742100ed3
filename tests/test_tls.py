"""TLS on the listener: HTTP/1.1 over TLS 1.2+, X-Forwarded-Proto https, Secure cookies, and
certificates re-read on SIGHUP without dropping connections.

Certificates are made at run time with the openssl command line (a throwaway CA-less
self-signed pair for 127.0.0.1), never shipped.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from canaryproxy.app import Proxy
from canaryproxy.config.load import ConfigError, load_config
from canaryproxy.outcomes.accesslog import AccessLog
from canaryproxy.state.store import MemoryStateStore
from tests.support import LOCAL, Backend, make_config, service, start_proxy

Pair = tuple[Path, Path]


def make_pair(directory: Path, name: str) -> Pair:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=IP:{LOCAL}", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path, "first")


def client_context(*certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for cert in certs:
        context.load_verify_locations(str(cert))
    return context


async def exchange(
    port: int, context: ssl.SSLContext, request: bytes
) -> tuple[bytes, bytes, asyncio.StreamWriter]:
    """(peer certificate DER, response head, the open writer) of one request."""
    reader, writer = await asyncio.open_connection(LOCAL, port, ssl=context)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(v for n, v in _headers(head) if n == b"content-length"))
    await reader.readexactly(length)
    peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return peer, head, writer


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [
        (n.strip().lower(), v.strip()) for n, _, v in (ln.partition(b":") for ln in lines if ln)
    ]


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


GET = b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n"


async def test_https_is_served_with_forwarded_proto_and_secure_cookies(
    pools: tuple[Backend, Backend], pair: Pair
) -> None:
    stable, canary = pools
    cert, key = pair
    config = make_config(
        {"web": service([stable.url], [canary.url], canary_weight=50)},
        tls={"cert": str(cert), "key": str(key)},
    )
    assert config.sticky.secure  # the default follows TLS
    async with start_proxy(config) as proxy:
        peer, head, writer = await exchange(proxy.port, client_context(cert), GET)
        writer.close()
        plain_reader, plain_writer = await asyncio.open_connection(LOCAL, proxy.port)
        plain_writer.write(GET)
        answer = await asyncio.wait_for(plain_reader.read(100), 5)  # a TLS alert, or nothing
        plain_writer.close()
    assert peer == der(cert)
    assert head.startswith(b"HTTP/1.1 200")
    cookie = next(v for n, v in _headers(head) if n == b"set-cookie")
    assert b"; Secure" in cookie
    seen = [dict(s["headers"]) for s in stable.seen + canary.seen]
    assert [h["X-Forwarded-Proto"] for h in seen] == ["https"]
    assert not answer.startswith(b"HTTP/")


async def test_tls_below_1_2_is_refused(backend: Backend, pair: Pair) -> None:
    cert, key = pair
    config = make_config({"web": service([backend.url])}, tls={"cert": str(cert), "key": str(key)})
    old = client_context(cert)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so this client really offers TLS 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, on purpose
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    async with start_proxy(config) as proxy:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await exchange(proxy.port, old, GET)
    assert backend.count == 0


async def test_sighup_rereads_the_certificate_without_dropping_connections(
    tmp_path: Path, backend: Backend, pair: Pair
) -> None:
    first_cert, first_key = pair
    second_cert, second_key = make_pair(tmp_path, "second")
    path = tmp_path / "c.yaml"

    def write(cert: Path, key: Path) -> None:
        config: dict[str, Any] = {
            "listen": f"{LOCAL}:0",
            "admin": {"listen": f"{LOCAL}:0", "token": "t"},
            "tls": {"cert": str(cert), "key": str(key)},
            "services": {"web": {"stable": {"backends": [{"url": backend.url}]}}},
        }
        path.write_text(yaml.safe_dump(config))

    write(first_cert, first_key)
    proxy = Proxy(
        load_config(path),
        config_path=str(path),
        store=MemoryStateStore(),
        access_log=AccessLog(None),
    )
    await proxy.start()
    trust = client_context(first_cert, second_cert)
    port = proxy.proxy_address[1]
    try:
        peer, _, kept = await exchange(port, trust, GET)  # a keep-alive connection, left open
        assert peer == der(first_cert)
        write(second_cert, second_key)
        assert await proxy.reload()
        fresh, _, writer = await exchange(port, trust, GET)
        writer.close()
        assert fresh == der(second_cert)
        kept.write(GET)  # the connection opened before the reload goes on with its session
        assert kept.get_extra_info("ssl_object").getpeercert(binary_form=True) == peer
        write(second_cert, first_key)  # a certificate with somebody else's key
        assert not await proxy.reload()
        after, _, writer = await exchange(port, trust, GET)
        writer.close()
        assert after == der(second_cert)  # the bad pair was refused, the good one kept
        kept.close()
    finally:
        await proxy.stop()


def test_a_certificate_that_does_not_load_is_a_config_error(tmp_path: Path, pair: Pair) -> None:
    _, key = pair
    other_cert, _ = make_pair(tmp_path, "other")
    for tls, reason in [
        ({"cert": str(tmp_path / "missing.crt"), "key": str(key)}, "No such file"),
        ({"cert": str(other_cert), "key": str(key)}, "KEY_VALUES_MISMATCH"),
        ({"cert": str(key), "key": str(key)}, "cannot load"),
    ]:
        path = tmp_path / "c.yaml"
        services = {"web": {"stable": {"backends": [{"url": "http://127.0.0.1:9"}]}}}
        path.write_text(yaml.safe_dump({"tls": tls, "services": services}))
        with pytest.raises(ConfigError) as raised:
            load_config(path, {})
        (error,) = raised.value.errors
        assert error.startswith("tls: cannot load the certificate"), error
        assert reason in error, error


def test_an_explicit_secure_false_is_kept_behind_tls(pair: Pair) -> None:
    cert, key = pair
    services = {"web": service(["http://127.0.0.1:9"])}
    tls = {"cert": str(cert), "key": str(key)}
    assert make_config(services, tls=tls, sticky={"secure": False}).sticky.secure is False
    assert make_config(services).sticky.secure is False
