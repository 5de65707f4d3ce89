from kfp import dsl

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def deploy(reference: str, triton_url: str, store: str = "") -> str:
    """Serve a registered version on Triton; the old version answers until the new one is ready.

    A deploy that fails leaves the serving version as it was, and moves the champion alias that
    the promote step just moved back to the previous champion.

    Args:
        reference: The registered version: `NAME@ALIAS` or `NAME/VERSION`.
        triton_url: Triton's HTTP address.
        store: The serving store (Triton's model repository and the adapters it serves); default
            the local work folder's.

    Returns:
        Output: What requests pass as ADAPTER (empty for a DreamBooth model, served as its own model).
    """
    from dreamloom.serving.deploy import deploy as deploy_version
    from dreamloom.serving.repository import ServingStore
    from dreamloom.steps import run_step

    def work():
        result = deploy_version(reference, triton_url, store=ServingStore(store or None), restore_champion=True)
        print(f"deployed {result.name} v{result.version}: Triton {result.triton_model} version {result.triton_version}")
        return result.adapter

    return run_step(work)
