from kfp import dsl

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def deploy(reference: str, triton_url: str, store: str = "") -> str:
    """Serve the promoted version on Triton (the old version answers until the new one is ready);
    returns what requests pass as ADAPTER (empty for a DreamBooth model, served as its own model)."""
    from dreamloom.serving.deploy import deploy as deploy_version
    from dreamloom.serving.repository import ServingStore

    result = deploy_version(reference, triton_url, store=ServingStore(store or None))
    print(f"deployed {result.name} v{result.version}: Triton {result.triton_model} version {result.triton_version}")
    return result.adapter
