"""numpy schedulers equal to diffusers', selectable by diffusers class name or short alias.

    from sdc.runtime.schedulers import from_config
    sched = from_config(bundle_scheduler_config, "dpmpp_2m_karras")   # or "DPMSolverMultistepScheduler"

Like `X.from_config(pipe.scheduler.config)` in diffusers, a config written for one class builds any
other: the beta schedule and shared options carry over, options of the other class are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdc.errors import ConfigError, InputError
from sdc.runtime.schedulers.base import DEFAULT_PATH, Scheduler
from sdc.runtime.schedulers.ddim import DDIMScheduler
from sdc.runtime.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler
from sdc.runtime.schedulers.euler import EulerDiscreteScheduler
from sdc.runtime.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from sdc.runtime.schedulers.flow_match import FlowMatchEulerDiscreteScheduler
from sdc.runtime.schedulers.lcm import LCMScheduler
from sdc.runtime.schedulers.pndm import PNDMScheduler
from sdc.runtime.schedulers.unipc import UniPCMultistepScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {cls.class_name: cls for cls in (
    DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
    DPMSolverMultistepScheduler, LCMScheduler, UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)}

# The DPM++ 2M aliases pin what makes them "2M" (and Karras or not) whatever the bundle's config says.
_DPMPP_2M = dict(algorithm_type="dpmsolver++", solver_order=2, use_exponential_sigmas=False)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(_DPMPP_2M, use_karras_sigmas=False)),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", dict(_DPMPP_2M, use_karras_sigmas=True)),
    "lcm": ("LCMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

__all__ = ["ALIASES", "SCHEDULERS", "Scheduler", "available", "from_config", "resolve", *SCHEDULERS]


def available() -> list[str]:
    """Every accepted scheduler name: aliases first, then diffusers class names."""
    return [*ALIASES, *SCHEDULERS]


def resolve(name: str) -> tuple[type[Scheduler], dict[str, Any]]:
    """(class, option overrides) for an alias or a diffusers class name; KeyError if unknown."""
    if name in SCHEDULERS:
        return SCHEDULERS[name], {}
    key = name.strip().lower().replace("-", "_")
    if key in ALIASES:
        cls_name, overrides = ALIASES[key]
        return SCHEDULERS[cls_name], dict(overrides)
    for cls_name, cls in SCHEDULERS.items():
        if cls_name.lower() == key:
            return cls, {}
    raise KeyError(name)


def from_config(config: Mapping[str, Any] | None, name: str | None = None, *, path: str = DEFAULT_PATH,
                **overrides: Any) -> Scheduler:
    """A fresh scheduler from a diffusers scheduler_config.json dict.

    `name` (alias or class name) picks the scheduler; None uses the config's `_class_name`.
    `overrides` set options of the chosen class (as keyword arguments of diffusers' from_config).
    """
    config = dict(config or {})
    if name is None:
        name = config.get("_class_name")
        if not name:
            raise ConfigError(path, "_class_name", "missing, and no scheduler name was given")
        try:
            cls, alias_overrides = resolve(str(name))
        except KeyError:
            raise ConfigError(path, "_class_name", f"unsupported scheduler {name!r}",
                              f"pass a scheduler name: {', '.join(available())}") from None
    else:
        try:
            cls, alias_overrides = resolve(name)
        except KeyError:
            raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(available())}") from None
    return cls(config, path=path, **{**alias_overrides, **overrides})
