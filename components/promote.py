from kfp import dsl

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def promote(name: str, version: str, gate_config: dict) -> str:
    """Move the champion alias to the version; the gate is applied again, so nothing moves past it.

    Args:
        name: The registered model.
        version: The version to promote.
        gate_config: The same gate the gate step applied.

    Returns:
        Output: The reference serving deploys: `NAME@champion`.
    """
    from dreamloom.errors import DreamloomError
    from dreamloom.registry import GateConfig
    from dreamloom.registry import promote as promote_version
    from dreamloom.steps import run_step

    def work():
        result = promote_version(name, version, GateConfig.parse(gate_config))
        if not result.passed:
            raise DreamloomError(f"{name} v{version} no longer passes the gate; the champion stays")
        return f"{name}@champion"

    return run_step(work)
