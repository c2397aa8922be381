"""How the command line reaches Redis: the flags of redis-cli, and one client."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._cli_table import truncate

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
PASSWORD_ENV = "REDISCLI_AUTH"
"""The environment variable redis-cli reads a password from; so do we."""

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a connection before calling the server unreachable."""

COMMAND_TIMEOUT = 30.0
"""Seconds to wait for one reply."""

RETRIES = 1
"""Immediate retries of a command whose connection failed: a command line
should say at once that the server is unreachable, not back off for seconds."""

URL_SCHEMES = ("redis://", "rediss://", "unix://")

SHOWN_URL_WIDTH = 40
"""The most of a bad ``-u`` a message shows, so that it fits on one line."""


class ConnectionFlagError(Exception):
    """The connection flags cannot be used: a usage error, not a Redis one."""


def connection_flags() -> argparse.ArgumentParser:
    """A parent parser with the connection flags of redis-cli.

    Every default is ``SUPPRESS``, so the flags can be given before or after
    the subcommand, and :meth:`Connection.from_args` can tell which were given.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("connection (as redis-cli)")
    unset: Any = argparse.SUPPRESS
    group.add_argument(
        "-u",
        dest="url",
        metavar="URL",
        default=unset,
        help="server URI, e.g. redis://user:password@host:6379/0",
    )
    group.add_argument(
        "-h",
        dest="host",
        metavar="HOST",
        default=unset,
        help=f"server host (default {DEFAULT_HOST})",
    )
    group.add_argument(
        "-p",
        dest="port",
        metavar="PORT",
        type=int,
        default=unset,
        help=f"server port (default {DEFAULT_PORT})",
    )
    group.add_argument(
        "-n", dest="db", metavar="DB", type=int, default=unset, help="database number"
    )
    group.add_argument(
        "-a",
        dest="password",
        metavar="PASSWORD",
        default=unset,
        help=f"password; safer in the environment variable {PASSWORD_ENV}",
    )
    group.add_argument("--user", metavar="USER", default=unset, help="ACL user name")
    group.add_argument(
        "--tls", action="store_true", default=unset, help="connect with TLS"
    )
    group.add_argument(
        "--cacert", metavar="FILE", default=unset, help="CA certificate for TLS"
    )
    group.add_argument(
        "--cert", metavar="FILE", default=unset, help="client certificate for TLS"
    )
    group.add_argument(
        "--key", metavar="FILE", default=unset, help="client private key for TLS"
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=unset,
        help="do not verify the server's TLS certificate",
    )
    return parser


@dataclass(frozen=True)
class Connection:
    """Where the Redis of a service is, and how to log in to it."""

    url: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db: int | None = None
    password: str | None = None
    user: str | None = None
    tls: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        """The connection the parsed flags describe; the password may come from
        ``REDISCLI_AUTH``.

        Raises:
            ConnectionFlagError: ``-u`` is not a Redis URL, or ``--tls`` was given
                with a ``unix://`` one.
        """
        given = vars(args)
        url = given.get("url")
        if url is not None:
            _check_url(url, tls=given.get("tls", False))
        password = given.get("password") or os.environ.get(PASSWORD_ENV) or None
        return cls(
            url=url,
            host=given.get("host", DEFAULT_HOST),
            port=given.get("port", DEFAULT_PORT),
            db=given.get("db"),
            password=password,
            user=given.get("user"),
            tls=given.get("tls", False),
            cacert=given.get("cacert"),
            cert=given.get("cert"),
            key=given.get("key"),
            insecure=given.get("insecure", False),
        )

    @staticmethod
    def names_a_server(args: argparse.Namespace) -> bool:
        """Whether the flags in *args* say which server to use."""
        return any(name in vars(args) for name in ("url", "host", "port"))

    @property
    def address(self) -> str:
        """The server, for messages; a password in the URL is masked."""
        if self.url is None:
            return f"{self.host}:{self.port}"
        return _masked(self.url)

    def redis(self) -> aioredis.Redis:
        """A new client of this server; the caller closes it.

        As with redis-cli, ``-n`` and ``--user`` win over the database and user
        a ``-u`` URL names.
        """
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": COMMAND_TIMEOUT,
            "retry": Retry(NoBackoff(), RETRIES),
        }
        if self.password is not None:
            options["password"] = self.password
        if self.tls or (self.url or "").startswith("rediss://"):
            options.update(self._tls_options())
        flags: dict[str, Any] = {}
        if self.db is not None:
            flags["db"] = self.db
        if self.user is not None:
            flags["username"] = self.user
        if self.url is None:
            return aioredis.Redis(
                host=self.host, port=self.port, ssl=self.tls, **options, **flags
            )

        url = self.url
        if self.tls and url.startswith("redis://"):
            url = "rediss://" + url.removeprefix("redis://")
        # from_url lets what the URL says win over keyword arguments, so the
        # flags are laid over the parsed URL here instead.
        pool = aioredis.ConnectionPool(**{**options, **parse_url(url), **flags})
        return aioredis.Redis.from_pool(pool)

    def _tls_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.cacert is not None:
            options["ssl_ca_certs"] = self.cacert
        if self.cert is not None:
            options["ssl_certfile"] = self.cert
        if self.key is not None:
            options["ssl_keyfile"] = self.key
        if self.insecure:
            options["ssl_cert_reqs"] = "none"
        return options

    def argv(self) -> list[str]:
        """These flags for another process, without the password."""
        flags = (
            ["-u", self.url] if self.url else ["-h", self.host, "-p", str(self.port)]
        )
        optional = {"-n": self.db, "--user": self.user, "--cacert": self.cacert}
        optional |= {"--cert": self.cert, "--key": self.key}
        for flag, value in optional.items():
            if value is not None:
                flags += [flag, str(value)]
        switches = {"--tls": self.tls, "--insecure": self.insecure}
        return flags + [flag for flag, on in switches.items() if on]

    def environment(self) -> dict[str, str]:
        """The environment for another process, carrying the password."""
        env = dict(os.environ)
        if self.password is not None:
            env[PASSWORD_ENV] = self.password
        return env


def _masked(url: str) -> str:
    """*url* with its password, if any, replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # A netloc urlsplit refuses, such as an unclosed "[": mask by hand.
        return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url, count=1)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _check_url(url: str, *, tls: bool) -> None:
    """Raise :class:`ConnectionFlagError` unless redis-py can connect to *url*."""
    shown = truncate(_masked(url), SHOWN_URL_WIDTH, cut_end=False)
    if not url.startswith(URL_SCHEMES):
        msg = f"-u {shown!r} is not a redis://, rediss:// or unix:// URL"
        raise ConnectionFlagError(msg)
    if tls and url.startswith("unix://"):
        msg = f"--tls does not apply to the unix socket of -u {shown!r}"
        raise ConnectionFlagError(msg)
    try:
        parse_url(url)
    except ValueError as exc:
        msg = f"-u {shown!r} is not a Redis URL: {str(exc).rstrip('.')}"
        raise ConnectionFlagError(msg) from None
