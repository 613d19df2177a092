"""Strategies, one file each. ``STRATEGIES`` maps the CLI name to the class."""

from __future__ import annotations

from streamkd.strategies.droc import DROC
from streamkd.strategies.er import ER
from streamkd.strategies.er_ace import ERACE
from streamkd.strategies.lightsuan import LightSUANKD
from streamkd.strategies.mir import MIR
from streamkd.strategies.naive import Naive
from streamkd.strategies.online_kd import OnlineKD
from streamkd.strategies.onpro import OnPro
from streamkd.strategies.pcr import HPCR, PCR
from streamkd.strategies.sc_clip import SCCLIP
from streamkd.strategies.scr import SCR
from streamkd.strategy import Strategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        Naive,
        ER,
        ERACE,
        MIR,
        SCR,
        PCR,
        HPCR,
        OnPro,
        DROC,
        OnlineKD,
        LightSUANKD,
        SCCLIP,
    )
}

__all__ = [
    "DROC",
    "ER",
    "ERACE",
    "HPCR",
    "LightSUANKD",
    "MIR",
    "OnPro",
    "OnlineKD",
    "PCR",
    "SCCLIP",
    "SCR",
    "STRATEGIES",
    "Naive",
    "Strategy",
    "get_strategy",
]


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; a clear error lists the valid names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}"
        ) from None
