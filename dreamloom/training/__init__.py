"""The training loop (``trainer``), its Ray Train worker (``worker``) and the driver (``launcher``)."""
