from kfp import dsl

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def gate(name: str, version: str, gate_config: dict) -> bool:
    """Make the version the challenger and hold it against the champion; True if it may be promoted."""
    from dreamloom.registry import GateConfig, judge

    result = judge(name, version, GateConfig.parse(gate_config))
    for check in result.checks:
        print(("PASS " if check.passed else "FAIL ") + check.message)
    print(f"{name} v{version}: {'passes' if result.passed else 'does not pass'} the gate")
    return result.passed
