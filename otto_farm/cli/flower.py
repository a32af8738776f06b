"""`otto-farm flower`: Flower, Celery's web monitor, on otto-farm's broker, behind basic auth."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Annotated

import typer
from kombu.utils.url import maybe_sanitize_url

from otto_farm.cli.common import console, exits_cleanly
from otto_farm.embedded import reachable
from otto_farm.errors import InputError
from otto_farm.settings import ENV_PREFIX, Settings

BASIC_AUTH_ENV = f"{ENV_PREFIX}FLOWER_BASIC_AUTH"
# Flower reads FLOWER_* variables as options; otto-farm sets the ones it checks and drops the rest, so
# the Flower that runs is the one that was checked (no stray FLOWER_AUTH or FLOWER_UNAUTHENTICATED_API).
FLOWER_ENV_PREFIX = "FLOWER_"


def flower_argv(port: int, address: str) -> list[str]:
    """The command line of Flower on this app; the broker comes from the environment, never the argv."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "otto_farm.celery_app",
        "flower",
        f"--port={port}",
        f"--address={address}",
    ]


def masked_url(url: str | None) -> str:
    """A URL fit to print: its password (if any) replaced by `**`."""
    return str(maybe_sanitize_url(url)) if url else "-"


def is_loopback(address: str) -> bool:
    """Whether every address `address` stands for is a loopback one ("" and 0.0.0.0 mean every interface)."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(address, None)
    except OSError:
        return False
    # Flower binds every address the name resolves to: one public address among them opens it.
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def basic_auth() -> str:
    """OTTO_FARM_FLOWER_BASIC_AUTH, checked: `user:password[,user:password…]`, or "" when unset."""
    value = os.environ.get(BASIC_AUTH_ENV, "").strip()
    for pair in filter(None, value.split(",")):
        user, sep, password = pair.partition(":")
        if not (user and sep and password):
            # The value holds passwords: the message names the variable, never echoes it.
            raise InputError(BASIC_AUTH_ENV, "", "expected user:password (several separated by commas)")
    return value


@exits_cleanly
def flower(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port Flower listens on.")] = 5555,
    address: Annotated[
        str, typer.Option(help=f"Address Flower listens on; beyond loopback only with {BASIC_AUTH_ENV}.")
    ] = "127.0.0.1",
) -> None:
    """Run Flower (replaces this process) on the configured broker or the running embedded one.

    Basic auth comes from OTTO_FARM_FLOWER_BASIC_AUTH ("user:password"); without it Flower may listen on
    loopback only, since an open Flower lets anyone on the network read and revoke jobs (CVE-2022-30034).
    """
    auth = basic_auth()
    if not auth and not is_loopback(address):
        raise InputError(
            "--address",
            "",
            f"{address or 'every interface'} is beyond loopback: set {BASIC_AUTH_ENV}=user:password first "
            "(an open Flower is CVE-2022-30034)",
        )
    settings = reachable(Settings.load())
    env = {k: v for k, v in os.environ.items() if not k.startswith(FLOWER_ENV_PREFIX)}
    env.update(settings.env())
    if auth:
        # Flower's --basic-auth by environment: an argv would show the passwords to every local user (ps).
        env[f"{FLOWER_ENV_PREFIX}BASIC_AUTH"] = auth
    # Flower's API (/api/…) answers 401 to all without auth; its hint to that, FLOWER_UNAUTHENTICATED_API,
    # is dropped above: credentials are the one way in.
    api = (
        "its API with those credentials (curl -u user:password …/api/tasks)"
        if auth
        else f"its API (/api/…) answers 401: set {BASIC_AUTH_ENV}=user:password and pass them "
        "(curl -u user:password …/api/tasks)"
    )
    console.print(
        f"Flower on http://{address}:{port} (basic auth {'on' if auth else 'off'}), "
        f"broker {masked_url(settings.broker_url)}; {api}",
        markup=False,
    )
    sys.stdout.flush()  # execve drops whatever is still buffered
    os.execve(sys.executable, flower_argv(port, address), env)
