from kfp import dsl

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def gate(name: str, version: str, gate_config: dict) -> bool:
    """Make the version the challenger and judge it against the champion; nothing is promoted here.

    Args:
        name: The registered model.
        version: The challenger version.
        gate_config: The gate: metric thresholds, the tolerance against the champion, and which
            metrics count (see `dreamloom.registry.GateConfig`); empty for the defaults.

    Returns:
        Output: Whether the version may be promoted.
    """
    from dreamloom.registry import GateConfig, judge
    from dreamloom.steps import run_step

    def work():
        result = judge(name, version, GateConfig.parse(gate_config))
        for check in result.checks:
            print(("PASS " if check.passed else "FAIL ") + check.message)
        print(f"{name} v{version}: {'passes' if result.passed else 'does not pass'} the gate")
        return result.passed

    return run_step(work)
