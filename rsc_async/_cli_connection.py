"""How the command line reaches Redis: the flags of redis-cli, and one client."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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
        ``REDISCLI_AUTH``."""
        given = vars(args)
        password = given.get("password") or os.environ.get(PASSWORD_ENV) or None
        return cls(
            url=given.get("url"),
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
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))

    def redis(self) -> aioredis.Redis:
        """A new client of this server; the caller closes it."""
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": COMMAND_TIMEOUT,
            "retry": Retry(NoBackoff(), RETRIES),
        }
        if self.db is not None:
            options["db"] = self.db
        if self.password is not None:
            options["password"] = self.password
        if self.user is not None:
            options["username"] = self.user
        if self.tls or (self.url or "").startswith("rediss://"):
            options.update(self._tls_options())
        if self.url is not None:
            url = self.url
            if self.tls and url.startswith("redis://"):
                url = "rediss://" + url.removeprefix("redis://")
            return aioredis.Redis.from_url(url, **options)
        return aioredis.Redis(host=self.host, port=self.port, ssl=self.tls, **options)

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
