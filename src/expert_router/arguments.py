"""argparse types shared by the commands and the packages that add options of their own (`emulate.options`)."""

from __future__ import annotations

import argparse
import ipaddress
import math
import re


def finite_float(text: str) -> float:
    """A number, not nan or inf: a nan duration or rate made runs that never end."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (a duration)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    return _int_within(text, 0, 65535, "is not a port (0 to 65535)")


def listen_port(text: str) -> int:
    """A port a configuration file names (1 to 65535): nginx refuses `listen 127.0.0.1:0`."""
    return _int_within(text, 1, 65535, "is not a port to listen on (1 to 65535)")


def host(text: str) -> str:
    """An IP address or a host name, as written into a configuration file (a space or ';' there broke it)."""
    try:
        ipaddress.ip_address(text.strip("[]"))
        return text
    except ValueError:
        pass
    if not re.fullmatch(
        r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*", text
    ):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or a host name")
    return text


def error_status(text: str) -> int:
    """An HTTP status that is an error (400 to 599)."""
    return _int_within(text, 400, 599, "is not an HTTP error status (400 to 599)")


def positive_int(text: str) -> int:
    return _int_within(text, 1, math.inf, "must be at least 1")


def non_negative_int(text: str) -> int:
    return _int_within(text, 0, math.inf, "must be 0 or more")


def _int_within(text: str, low: float, high: float, says: str) -> int:
    value = _int(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} {says}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
