"""Where every component runs: the dreamloom image (which carries kfp, so KFP does not pip-install it)."""

import re

from dreamloom.errors import DreamloomError
from dreamloom.settings import container_image

IMAGE = container_image()
if "@" in IMAGE and not re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", IMAGE):
    raise DreamloomError(f"image {IMAGE!r}: a digest is sha256: and 64 hex digits (docker push prints it)")

COMPONENT = {"base_image": IMAGE, "install_kfp_package": False}
