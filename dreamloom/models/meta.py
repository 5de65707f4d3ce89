"""Modules on the meta device (shapes, no memory), built one thread at a time.

accelerate's and peft's ``init_empty_weights`` patch ``torch.nn.Module.register_parameter`` for
the whole process while they are active. Two threads inside at once can restore each other's
patch and leave it in place for good: seen when two concurrent registrations checked their
artifacts' fit, after which every model load in the process failed with "Parameter.__new__() got
an unexpected keyword argument '_is_hf_initialized'". Every meta-device build holds ``META_LOCK``.
"""

from __future__ import annotations

import contextlib
import threading

META_LOCK = threading.RLock()


@contextlib.contextmanager
def empty_weights():
    """accelerate's ``init_empty_weights``, holding ``META_LOCK``."""
    from accelerate import init_empty_weights

    with META_LOCK, init_empty_weights():
        yield
