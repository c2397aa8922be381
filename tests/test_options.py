"""Options of the client and of its retries, checked at construction."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest
import redis.asyncio

from rsc_async import InvalidOptionError, RedisStreamClient, RetryConfig


@pytest.fixture
def unconnected_redis() -> redis.asyncio.Redis:
    """A client object that is never used to connect: construction needs none."""
    return redis.asyncio.Redis(host="127.0.0.1", port=1)


@pytest.mark.parametrize(
    ("options", "option", "allowed"),
    [
        ({"hb_interval": 0.19}, "hb_interval", ">= 0.2"),
        ({"hb_interval": 0.0}, "hb_interval", ">= 0.2"),
        ({"hb_interval": -1.0}, "hb_interval", ">= 0.2"),
        ({"hb_interval": math.nan}, "hb_interval", ">= 0.2"),
        ({"hb_interval": 0.5, "lbs_idle_time": 0.99}, "lbs_idle_time", ">= 1.0"),
        ({"hb_interval": 2.0, "lbs_idle_time": 3.9}, "lbs_idle_time", ">= 4.0"),
        ({"lbs_recovery_count": 0}, "lbs_recovery_count", ">= 1"),
        ({"lbs_recovery_count": -5}, "lbs_recovery_count", ">= 1"),
        ({"ksp_buffer_size": 0}, "ksp_buffer_size", ">= 1"),
        ({"output_buffer_size": 0}, "output_buffer_size", ">= 1"),
        ({"read_batch": 0}, "read_batch", ">= 1"),
        ({"max_deliveries": 0}, "max_deliveries", ">= 1"),
        ({"lbs_recovery_count": 1.5}, "lbs_recovery_count", "an int >= 1"),
        ({"read_batch": True}, "read_batch", "an int >= 1"),
        ({"hb_interval": "2"}, "hb_interval", "a number >= 0.2"),
        ({"lbs_idle_time": None}, "lbs_idle_time", "a number >= 4.0"),
        (
            {"hb_interval": 0.5, "lbs_idle_time": 1.0, "reconcile_interval": 0.4},
            "reconcile_interval",
            ">= 0.5",
        ),
        ({"reconcile_interval": -1.0}, "reconcile_interval", ">= 2.0"),
        ({"consumer_id": ""}, "consumer_id", "empty"),
        ({"retry": {"max_retries": 3}}, "retry", "RetryConfig"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_client_rejects_an_option_out_of_range(
    unconnected_redis: redis.asyncio.Redis,
    options: dict[str, Any],
    option: str,
    allowed: str,
) -> None:
    """An option out of range raises a ValueError naming it and its range."""
    with pytest.raises(InvalidOptionError) as caught:
        RedisStreamClient(unconnected_redis, "svc", **options)

    assert isinstance(caught.value, ValueError)
    assert option == caught.value.option
    assert f"{option}={options[option]!r}" in str(caught.value)
    assert allowed in str(caught.value)


def test_client_rejects_an_empty_service(
    unconnected_redis: redis.asyncio.Redis,
) -> None:
    """The service name is required: an empty one raises, naming the option."""
    with pytest.raises(InvalidOptionError) as caught:
        RedisStreamClient(unconnected_redis, "")

    assert isinstance(caught.value, ValueError)
    assert "service" == caught.value.option
    assert "service" in str(caught.value)
    assert "non-empty" in str(caught.value)


def test_client_accepts_every_option_at_its_limit(
    unconnected_redis: redis.asyncio.Redis,
) -> None:
    """The smallest allowed value of each option is accepted."""
    client = RedisStreamClient(
        unconnected_redis,
        "svc",
        hb_interval=0.2,
        lbs_idle_time=0.4,
        lbs_recovery_count=1,
        ksp_buffer_size=1,
        output_buffer_size=1,
        read_batch=1,
        retry=RetryConfig(max_retries=-1),
        reconcile_interval=0.2,
        max_deliveries=1,
    )

    assert 0.2 == client.hb_interval


def test_client_accepts_a_reconcile_interval_of_zero(
    unconnected_redis: redis.asyncio.Redis,
) -> None:
    """A reconcile_interval of 0 turns the sweeps off instead of being too short."""
    client = RedisStreamClient(
        unconnected_redis,
        "svc",
        hb_interval=0.5,
        lbs_idle_time=1.0,
        reconcile_interval=0,
    )

    assert 0.5 == client.hb_interval


@pytest.mark.parametrize("max_retries", [-1, 0, 1, 1000])
def test_retry_config_accepts_forever_never_and_a_count(max_retries: int) -> None:
    """max_retries is -1 (forever), 0 (never) or a count."""
    assert max_retries == RetryConfig(max_retries=max_retries).max_retries


@pytest.mark.parametrize("max_retries", [-2, -100])
def test_retry_config_rejects_max_retries_below_minus_one(max_retries: int) -> None:
    """Below -1, max_retries has no meaning and raises naming the option."""
    with pytest.raises(InvalidOptionError) as caught:
        RetryConfig(max_retries=max_retries)

    assert isinstance(caught.value, ValueError)
    assert "max_retries" == caught.value.option
    assert "max_retries" in str(caught.value)
    assert "-1" in str(caught.value)
    assert ">= 0" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "option", "allowed"),
    [
        ({"initial_delay": 0.0}, "initial_delay", "> 0"),
        ({"initial_delay": -0.1}, "initial_delay", "> 0"),
        ({"initial_delay": math.nan}, "initial_delay", "> 0"),
        ({"initial_delay": 0.1, "max_delay": 0.0}, "max_delay", ">= initial_delay"),
        ({"initial_delay": 0.1, "max_delay": -1.0}, "max_delay", ">= initial_delay"),
        ({"initial_delay": 2.0, "max_delay": 1.0}, "max_delay", ">= initial_delay"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_retry_config_rejects_delays_out_of_range(
    options: dict[str, Any], option: str, allowed: str
) -> None:
    """Delays must be positive and the ceiling at least the first delay."""
    with pytest.raises(InvalidOptionError) as caught:
        RetryConfig(**options)

    assert isinstance(caught.value, ValueError)
    assert option == caught.value.option
    assert option in str(caught.value)
    assert allowed in str(caught.value)


def test_retry_config_accepts_equal_initial_and_max_delay() -> None:
    """A constant delay (initial == max) is allowed."""
    retry = RetryConfig(initial_delay=1.5, max_delay=1.5)

    assert (1.5, 1.5) == (retry.initial_delay, retry.max_delay)


def test_client_id_uses_the_given_consumer_id_over_the_environment(
    unconnected_redis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit consumer id wins over POD_NAME and POD_IP."""
    monkeypatch.setenv("POD_NAME", "pod-name")
    monkeypatch.setenv("POD_IP", "10.0.0.7")

    client = RedisStreamClient(unconnected_redis, "svc", consumer_id="worker-1")

    assert "redis-consumer-worker-1" == client.id


def test_client_id_comes_from_pod_name(
    unconnected_redis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a consumer id, POD_NAME names the consumer, before POD_IP."""
    monkeypatch.setenv("POD_NAME", "pod-name")
    monkeypatch.setenv("POD_IP", "10.0.0.7")

    client = RedisStreamClient(unconnected_redis, "svc")

    assert "redis-consumer-pod-name" == client.id


@pytest.mark.parametrize("pod_name", [None, ""], ids=["unset", "empty"])
def test_client_id_comes_from_pod_ip_without_pod_name(
    unconnected_redis: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
    pod_name: str | None,
) -> None:
    """Without a consumer id or POD_NAME, POD_IP names the consumer."""
    if pod_name is None:
        monkeypatch.delenv("POD_NAME", raising=False)
    else:
        monkeypatch.setenv("POD_NAME", pod_name)
    monkeypatch.setenv("POD_IP", "10.0.0.7")

    client = RedisStreamClient(unconnected_redis, "svc")

    assert "redis-consumer-10.0.0.7" == client.id


def test_client_id_falls_back_to_the_host_name(
    unconnected_redis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither a consumer id nor POD_NAME nor POD_IP, the host name is used."""
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_IP", raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "host-a")

    client = RedisStreamClient(unconnected_redis, "svc")

    assert "redis-consumer-host-a" == client.id


def test_client_id_uses_the_real_host_name(
    unconnected_redis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host name fallback is this machine's name."""
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_IP", raising=False)

    client = RedisStreamClient(unconnected_redis, "svc")

    assert f"redis-consumer-{socket.gethostname()}" == client.id


def test_client_can_be_built_outside_a_running_event_loop(
    unconnected_redis: redis.asyncio.Redis,
) -> None:
    """Construction needs no running loop, so a client can be made at import."""
    client = RedisStreamClient(
        unconnected_redis, "svc", consumer_id="c", hb_interval=0.5, lbs_idle_time=1.0
    )

    assert ("svc", "redis-consumer-c", 0.5) == (
        client.service,
        client.id,
        client.hb_interval,
    )
    assert [] == list(client.held_streams)
