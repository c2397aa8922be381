"""The rsc-async command line against real Redis servers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio
from _wait import wait_for
from redis.asyncio.connection import SSLConnection

from rsc_async import RedisStreamClient, add_stream
from rsc_async._cli import build_parser, main
from rsc_async._cli_connection import Connection
from rsc_async._cli_table import Column, render_table
from rsc_async.testing import RedisServer, free_port
from rsc_async.testing.pytest_plugin import RedisServerFactory

SUBPROCESS_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _no_password_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a REDISCLI_AUTH of the person running the tests out of them."""
    monkeypatch.delenv("REDISCLI_AUTH", raising=False)


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line in a thread, as its own event loop needs."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@contextlib.asynccontextmanager
async def _holding(
    connection: redis.asyncio.Redis, service: str, consumer: str, *names: str
) -> AsyncIterator[RedisStreamClient]:
    """A running consumer that holds a new data stream per name."""
    client = RedisStreamClient(
        connection, service, consumer_id=consumer, reconcile_interval=0
    )
    try:
        await client.init()
        for name in names:
            await add_stream(connection, service, name, info={"user": "u-1"})
        await wait_for(lambda: len(client.held_streams) == len(names))
        yield client
    finally:
        await client.done()


def _text(value: object) -> str:
    assert isinstance(value, bytes | str)
    return value.decode() if isinstance(value, bytes) else value


async def _entries(connection: redis.asyncio.Redis, key: str) -> list[dict[str, str]]:
    return [
        {_text(field): _text(value) for field, value in (fields or {}).items()}
        for _, fields in await connection.xrange(key) or []
    ]


async def test_status_json_shows_owner_ttl_and_deliveries_of_a_held_stream(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    service_name: str,
) -> None:
    """--json gives each stream's holder, lock TTL and deliveries, and the
    consumer."""
    async with _holding(redis_client, service_name, "alice", "session-1") as alice:
        [held] = alice.held_streams
        code, out, err = await _run(
            capsys, "status", service_name, "-u", redis_url, "--json"
        )

    document = json.loads(out)
    [stream] = document["streams"]
    [consumer] = document["consumers"]
    expected_stream = {
        "entry_id": held.id_in_lbs,
        "data_stream": "session-1",
        "owner": "redis-consumer-alice",
        "deliveries": 1,
        "consumer": "redis-consumer-alice",
    }
    assert (0, "") == (code, err)
    assert expected_stream == {key: stream[key] for key in expected_stream}
    assert 0 < stream["lock_ttl_ms"] <= 2000
    assert ("redis-consumer-alice", 1, 1) == (
        consumer["name"],
        consumer["pending"],
        consumer["held"],
    )
    assert ([], 1) == (document["dead"], document["lbs_length"])


async def test_status_piped_prints_tab_separated_sections_with_headers(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    service_name: str,
) -> None:
    """Without a terminal, each section is a header and tab-separated rows."""
    async with _holding(redis_client, service_name, "alice", "session-1") as alice:
        [held] = alice.held_streams
        code, out, _ = await _run(capsys, "status", service_name, "-u", redis_url)

    streams, consumers, dead = out.split("\n\n")
    header, row = streams.splitlines()
    name, owner, ttl, idle, deliveries, entry_id = row.split("\t")
    assert 0 == code
    assert "data_stream\towner\tlock_ttl_ms\tidle_ms\tdeliveries\tentry_id" == header
    assert ("session-1", "redis-consumer-alice", "1", held.id_in_lbs) == (
        name,
        owner,
        deliveries,
        entry_id,
    )
    assert ttl.isdigit()
    assert idle.isdigit()
    assert ["consumer\tpending\theld\tidle_ms"] == consumers.splitlines()[:1]
    assert "redis-consumer-alice\t1\t1\t" in consumers
    assert "dead_id\tdata_stream\treason\tentry_id\tconsumer\n" == dead


async def test_status_of_a_service_with_no_keys_is_empty(
    capsys: pytest.CaptureFixture[str], redis_url: str, service_name: str
) -> None:
    """A service nobody started has no streams, consumers or dead letters."""
    code, out, _ = await _run(capsys, "status", service_name, "-u", redis_url, "--json")

    document = json.loads(out)
    assert (0, 0, [], [], []) == (
        code,
        document["lbs_length"],
        document["streams"],
        document["consumers"],
        document["dead"],
    )


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other end of the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_status_in_a_terminal_is_a_table_within_80_columns(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """In a 120-column terminal the table stays within 80 and cuts long names."""
    long_name = "session-" + "x" * 70
    consumer = "a-consumer-with-a-rather-long-name-0123456789"
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    try:
        async with _holding(redis_client, service_name, consumer, long_name):
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "rsc_async", "status", service_name, "-u", redis_url),
                stdout=terminal,
                env=env,
            )
            os.close(terminal)
            terminal = -1
            output, code = await asyncio.wait_for(
                asyncio.gather(asyncio.to_thread(_read_all, master), child.wait()),
                SUBPROCESS_TIMEOUT,
            )
    finally:
        os.close(master)
        if terminal != -1:
            os.close(terminal)

    lines = output.decode().splitlines()
    [stream_row] = [line for line in lines if line.startswith("session-")]
    assert 0 == code
    assert [] == [line for line in lines if len(line) > 80]
    assert lines[2].startswith("DATA STREAM")
    assert "…" in stream_row
    assert stream_row.startswith("session-xx…")
    assert "0123456789" in stream_row


def test_table_cuts_flexible_columns_in_the_middle_to_fit() -> None:
    """A flexible column gives way to fit the width, keeping both of its ends."""
    columns = [Column("NAME", flexible=True), Column("ID")]
    rows = [["redis-consumer-" + "n" * 30 + "-tail", "1-0"]]

    table = render_table(columns, rows, width=30)

    expected = ["NAME" + " " * 23 + "ID", "redis-consum…nnnnnnn-tail  1-0"]
    assert expected == table.splitlines()


async def test_unreachable_redis_exits_1_with_one_line_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listening on the port: exit 1 and a one-line message."""
    port = free_port()

    code, out, err = await _run(capsys, "status", "svc", "-p", str(port))

    assert (1, "") == (code, out)
    assert 1 == len(err.splitlines())
    assert err.startswith(f"rsc-async: cannot reach Redis at 127.0.0.1:{port}: ")


async def test_unreachable_redis_with_a_long_url_says_why_within_80_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A long URL is cut in the middle so that the reason still fits one line."""
    url = f"redis://127.0.0.1:{free_port()}/0?client_name={'x' * 80}"

    code, _, err = await _run(capsys, "status", "svc", "-u", url)

    [line] = err.splitlines()
    assert 1 == code
    assert line.startswith("rsc-async: cannot reach Redis at redis://127.0")
    assert line.endswith(f"xxx: {os.strerror(errno.ECONNREFUSED)}")
    assert "…" in line
    assert len(line) <= 80


async def test_password_comes_from_rediscli_auth(
    capsys: pytest.CaptureFixture[str],
    redis_server_factory: RedisServerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server with a password refuses us until REDISCLI_AUTH holds it."""
    server = redis_server_factory("--requirepass", "s3cret")
    flags = ("-h", server.host, "-p", str(server.port))

    refused, _, refusal = await _run(capsys, "status", "svc", *flags)
    monkeypatch.setenv("REDISCLI_AUTH", "s3cret")
    accepted, _, _ = await _run(capsys, "status", "svc", *flags)

    assert (1, 0) == (refused, accepted)
    assert refusal.startswith(f"rsc-async: Redis at {server.host}:{server.port} ")


async def test_connection_flags_go_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], dedicated_redis: RedisServer
) -> None:
    """-h and -p work on either side of the subcommand."""
    host, port = dedicated_redis.host, str(dedicated_redis.port)

    before, _, _ = await _run(capsys, "-h", host, "-p", port, "status", "svc")
    after, _, _ = await _run(capsys, "status", "svc", "-h", host, "-p", port)

    assert (0, 0) == (before, after)


async def test_n_flag_wins_over_the_database_of_the_url(
    capsys: pytest.CaptureFixture[str],
    dedicated_redis: RedisServer,
    service_name: str,
) -> None:
    """-n 3 puts the new LBS entry in database 3 though the URL names 0."""
    url = dedicated_redis.url
    code, _, _ = await _run(capsys, "add", service_name, "s", "-u", url, "-n", "3")

    lengths = []
    for db in (0, 3):
        connection = redis.asyncio.Redis(
            host=dedicated_redis.host, port=dedicated_redis.port, db=db
        )
        try:
            lengths.append(await connection.xlen(f"{service_name}-input"))
        finally:
            await connection.aclose()
    assert (0, [0, 1]) == (code, lengths)


async def test_user_flag_wins_over_the_user_of_the_url(
    capsys: pytest.CaptureFixture[str], redis_server_factory: RedisServerFactory
) -> None:
    """--user logs in as that ACL user although the URL names another."""
    server = redis_server_factory("--user", "amy", "on", ">s3cret", "~*", "&*", "+@all")
    url = f"redis://nobody:s3cret@{server.host}:{server.port}/0"

    refused, _, _ = await _run(capsys, "status", "svc", "-u", url)
    accepted, _, err = await _run(capsys, "status", "svc", "-u", url, "--user", "amy")

    assert (1, 0, "") == (refused, accepted, err)


@pytest.mark.parametrize(
    "flags",
    [["-u", "redis://db.example:6380/0"], ["-h", "db.example", "-p", "6380"]],
)
async def test_tls_flag_makes_the_client_connect_with_tls(flags: list[str]) -> None:
    """--tls turns a redis:// URL or -h/-p into a TLS connection with --cacert."""
    args = build_parser().parse_args(
        ["status", "svc", *flags, "--tls", "--cacert", "ca.pem"]
    )
    client = Connection.from_args(args).redis()
    try:
        pool = client.connection_pool
        options = pool.connection_kwargs
        actual = (pool.connection_class, options["host"], options["port"])
        assert (SSLConnection, "db.example", 6380) == actual
        assert "ca.pem" == options["ssl_ca_certs"]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["status", "-u", "notaurl", "svc"], "'notaurl'"),
        (["add", "-u", "", "svc", "name"], "''"),
        (["status", "svc", "-u", "redis://:pw@host:port/0"], "'redis://:***@host"),
        (["status", "svc", "-u", "unix:///tmp/redis.sock", "--tls"], "'unix:///"),
    ],
)
def test_malformed_url_is_a_usage_error_on_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], shown: str
) -> None:
    """A -u that redis-py cannot use exits 2 with one line naming it, masked."""
    code = main(argv)

    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert (2, "") == (code, captured.out)
    assert f"-u {shown}" in line
    assert "pw" not in line


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        *([command, "--help"] for command in ("status", "add", "dead", "demo")),
    ],
)
def test_help_stays_within_80_columns_in_a_wide_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """In a 200-column terminal --help still wraps within 80 columns."""
    monkeypatch.setenv("COLUMNS", "200")

    with pytest.raises(SystemExit) as stopped:
        main(argv)

    lines = capsys.readouterr().out.splitlines()
    assert 0 == stopped.value.code
    assert [] == [line for line in lines if len(line) > 80]
    assert "usage: rsc-async" == lines[0][:16]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["status", "svc", "--watch", "soon"],
        ["add", "svc", "a<MUTEX_KEY_SEP>b"],
        ["add", "svc", "s", "--info", "no-equals-sign"],
        ["dead", "svc", "--requeue", "1-0", "--all"],
        ["dead", "svc", "--requeue", "not-an-id"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    """Bad arguments exit with argparse's code 2."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)

    assert 2 == stopped.value.code


async def test_add_prints_the_id_of_a_new_lbs_entry(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    service_name: str,
) -> None:
    """add puts one entry with the name and Info in the LBS and prints its id."""
    code, out, _ = await _run(
        capsys,
        *("add", service_name, "session-9", "-u", redis_url),
        *("--info", "user=u-1", "--info", "tier=gold=1"),
    )

    [entry] = await redis_client.xrange(f"{service_name}-input") or []
    expected = {
        "DataStreamName": "session-9",
        "Info": {"user": "u-1", "tier": "gold=1"},
    }
    assert (0, f"{_text(entry[0])}\n") == (code, out)
    assert expected == json.loads(_text((entry[1] or {})[b"lbs-input"]))


async def _dead_letter(
    connection: redis.asyncio.Redis, service: str, lbs_input: str | None, reason: str
) -> str:
    fields: dict[Any, Any] = {"reason": reason, "entry_id": "1-1"}
    fields["consumer"] = "redis-consumer-gone"
    if lbs_input is not None:
        fields["lbs-input"] = lbs_input
    return _text(await connection.xadd(f"{service}-dead", fields))


VALID = json.dumps({"DataStreamName": "session-1", "Info": {"user": "u-1"}})


async def test_dead_lists_each_dead_letter_with_its_stream_and_reason(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    service_name: str,
) -> None:
    """Dead letters set aside by a consumer are listed, oldest first."""
    async with _holding(redis_client, service_name, "alice"):
        await redis_client.xadd(f"{service_name}-input", {"lbs-input": "not json"})

        async def set_aside() -> bool:
            return 0 < await redis_client.xlen(f"{service_name}-dead")

        await wait_for(set_aside)
    valid_id = await _dead_letter(redis_client, service_name, VALID, "too often")

    code, out, _ = await _run(capsys, "dead", service_name, "-u", redis_url)

    header, invalid, valid = (line.split("\t") for line in out.splitlines())
    assert 0 == code
    assert ["dead_id", "data_stream", "reason", "entry_id", "consumer"] == header
    assert ["-", "value is not JSON", "redis-consumer-alice"] == [
        invalid[1],
        invalid[2],
        invalid[4],
    ]
    assert [valid_id, "session-1", "too often"] == valid[:3]


async def test_requeued_dead_letter_is_assigned_again(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    service_name: str,
) -> None:
    """--requeue moves a dead letter back to the LBS, where a consumer takes it."""
    dead_id = await _dead_letter(redis_client, service_name, VALID, "too often")

    async with _holding(redis_client, service_name, "alice") as alice:
        code, out, _ = await _run(
            capsys, "dead", service_name, "-u", redis_url, "--requeue", dead_id
        )
        await wait_for(lambda: len(alice.held_streams) == 1)
        [held] = alice.held_streams

    assert 0 == code
    assert f"requeued {dead_id} (session-1) as {held.id_in_lbs}\n" == out
    assert [] == await _entries(redis_client, f"{service_name}-dead")
    assert "session-1" == held.data_stream_name


async def test_requeue_all_keeps_dead_letters_that_do_not_parse(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    service_name: str,
) -> None:
    """--all requeues what parses and reports and keeps the rest."""
    not_json = await _dead_letter(redis_client, service_name, "{oops", "not JSON")
    await _dead_letter(redis_client, service_name, VALID, "too often")
    no_field = await _dead_letter(redis_client, service_name, None, "no lbs-input")

    code, out, err = await _run(capsys, "dead", service_name, "-u", redis_url, "--all")

    kept = [
        entry["reason"]
        for entry in await _entries(redis_client, f"{service_name}-dead")
    ]
    requeued = await _entries(redis_client, f"{service_name}-input")
    assert 0 == code
    assert ["not JSON", "no lbs-input"] == kept
    assert [{"lbs-input": VALID}] == requeued
    assert out.startswith("requeued ")
    assert [not_json, no_field] == [
        line.split()[2].rstrip(":") for line in err.splitlines()
    ]


async def test_requeue_of_an_unknown_dead_letter_exits_1(
    capsys: pytest.CaptureFixture[str], redis_url: str, service_name: str
) -> None:
    """Asking for a dead letter that is not there fails and says so."""
    code, _, err = await _run(
        capsys, "dead", service_name, "-u", redis_url, "--requeue", "1-0"
    )

    assert (1, "rsc-async: kept 1-0: no such dead letter\n") == (code, err)


async def test_watch_refreshes_until_ctrl_c_then_exits_0(
    redis_url: str, service_name: str
) -> None:
    """--watch prints a snapshot per period; SIGINT ends it cleanly."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "rsc_async", "status", service_name, "-u", redis_url),
        *("--watch", "0.05"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    snapshots = 0
    try:
        with anyio.fail_after(SUBPROCESS_TIMEOUT):
            while snapshots < 3:
                line = await child.stdout.readline()
                assert line, "the watch ended by itself"
                snapshots += line.startswith(b"# ")
        child.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(child.communicate(), SUBPROCESS_TIMEOUT)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()

    assert (0, b"") == (child.returncode, err)


@pytest.mark.slow
async def test_demo_shows_a_takeover_within_80_columns_and_exits_0(
    redis_url: str,
) -> None:
    """The demo shows a takeover within 80 columns, even with a long URL."""
    separator = "&" if "?" in redis_url else "?"
    url = f"{redis_url}{separator}client_name={'x' * 80}"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "rsc_async", "demo", "-u", url, "--hb-interval", "0.5"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), SUBPROCESS_TIMEOUT)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()

    text = out.decode()
    assert (0, b"") == (child.returncode, err)
    assert [] == [line for line in text.splitlines() if len(line) > 80]
    assert "xxx" in text.splitlines()[0]
    assert "crashes (SIGKILL)" in text
    assert "took over session-" in text
    assert "every data stream is held again" in text


def test_module_runs_the_command_line() -> None:
    """``python -m rsc_async --help`` prints the usage and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "rsc_async", "--help"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )

    assert (0, "usage: rsc-async") == (done.returncode, done.stdout[:16])
