"""Where every component runs: the dreamloom image (which carries kfp, so KFP does not pip-install it)."""

from dreamloom.settings import container_image

COMPONENT = {"base_image": container_image(), "install_kfp_package": False}
