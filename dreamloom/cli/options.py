"""Options several commands share, so that each reads and helps the same way everywhere."""

from __future__ import annotations


def add_sampler_argument(command) -> None:
    from dreamloom.samplers import DEFAULT_SAMPLER, SAMPLERS

    names = ", ".join(SAMPLERS)
    command.add_argument(
        "--sampler",
        default=DEFAULT_SAMPLER,
        help=f"the sampler, by its diffusers or A1111 name ({names}; 'DPM++ 2M Karras' works too); "
        f"default {DEFAULT_SAMPLER}",
    )
