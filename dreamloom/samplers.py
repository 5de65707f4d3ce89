"""Samplers by the names AUTOMATIC1111 and diffusers users know, built from a base's scheduler
config (its noise schedule and prediction type: SD 2.x's v-prediction carries over).

Names are matched loosely: ``dpmpp_2m_karras``, ``DPM++ 2M Karras`` and ``dpm++-2m-karras`` are
one sampler. A scheduler keeps per-call state (its timesteps, its step index), so every render
gets a fresh one (``make_scheduler`` costs well under a millisecond).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

from dreamloom.errors import DreamloomError


@dataclass(frozen=True)
class Sampler:
    scheduler: str  # a diffusers scheduler class
    options: dict = field(default_factory=dict)
    a1111: str = ""  # the label in AUTOMATIC1111's sampler menu


SAMPLERS: dict[str, Sampler] = {
    "dpmpp_2m": Sampler("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpmpp_2m_karras": Sampler("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "dpmpp_2m_sde": Sampler("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    "dpmpp_2m_sde_karras": Sampler(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        "DPM++ 2M SDE Karras",
    ),
    "euler": Sampler("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": Sampler("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": Sampler("HeunDiscreteScheduler", {}, "Heun"),
    "lms": Sampler("LMSDiscreteScheduler", {}, "LMS"),
    "unipc": Sampler("UniPCMultistepScheduler", {}, "UniPC"),
    "ddim": Sampler("DDIMScheduler", {}, "DDIM"),
    "pndm": Sampler("PNDMScheduler", {}, "PLMS"),
    "lcm": Sampler("LCMScheduler", {}, "LCM"),
}
DEFAULT_SAMPLER = "dpmpp_2m"


def _normalized(text: str) -> str:
    key = re.sub(r"[^a-z0-9]+", "_", text.strip().lower().replace("++", "pp")).strip("_")
    return re.sub(r"_ancestral$", "_a", key)


# Every way a sampler may be written, normalized: its own name and its A1111 label.
_ALIASES = {**{_normalized(s.a1111): name for name, s in SAMPLERS.items()}, **{name: name for name in SAMPLERS}}


def sampler_name(text: str | None) -> str:
    """The canonical name of a sampler written the A1111 or diffusers way; "" or None: the default."""
    if not text or not text.strip():
        return DEFAULT_SAMPLER
    name = _ALIASES.get(_normalized(text))
    if name is None:
        raise DreamloomError(f"unknown sampler {text!r}; choose one of {', '.join(SAMPLERS)}")
    return name


# What a sampler sets itself; never carried over from the scheduler a config was read from.
_SAMPLER_OPTIONS = {key for sampler in SAMPLERS.values() for key in sampler.options}
# Each scheduler made here keeps the base's whole config under this private key (diffusers carries
# "_" keys through from_config): a scheduler made from another sampler's config would otherwise
# lose what that sampler does not take (DDIM's clip_sample and set_alpha_to_one, say).
_BASE_CONFIG = "_base_scheduler_config"


def make_scheduler(name: str | None, config):
    """A new scheduler of the named sampler, configured from ``config``: the base's scheduler
    config (betas, timestep spacing, prediction type), or that of a scheduler made here."""
    import diffusers

    base = dict(config).get(_BASE_CONFIG) or {key: value for key, value in dict(config).items() if key[0] != "_"}
    sampler = SAMPLERS[sampler_name(name)]
    scheduler_class = getattr(diffusers, sampler.scheduler)
    accepted = inspect.signature(scheduler_class.__init__).parameters
    shared = {key: value for key, value in base.items() if key in accepted and key not in _SAMPLER_OPTIONS}
    scheduler = scheduler_class.from_config({**shared, **sampler.options})
    scheduler.register_to_config(**{_BASE_CONFIG: base})
    return scheduler
