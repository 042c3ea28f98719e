"""Running out of memory, told in one line instead of a traceback from deep inside torch.

Too little memory for a model (or a ``ulimit -v`` too low for torch's libraries) is
something the user can fix, not a bug: the CLI (and any other shell) prints
:func:`out_of_memory_message` instead. Every other error stays a traceback.
"""

from __future__ import annotations

import errno
import re
import resource


def out_of_memory_message(exc: BaseException) -> str | None:
    """What to tell the user when ``exc`` means memory ran out: ``MemoryError``, torch's
    CPU allocator, a shared library the loader could not map, ``ENOMEM``. It names the
    address-space limit (``ulimit -v``) when one is set. None for any other error."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and "DefaultCPUAllocator" in text:  # torch: "can't allocate memory: ..."
        tried = re.search(r"tried to allocate (\d+) bytes", text)
        what = f" allocating {_size(int(tried.group(1)))}" if tried else ""
    elif isinstance(exc, (ImportError, OSError)) and _unmappable(text):
        library = text.split(": ", 1)[0].rsplit("/", 1)[-1]
        what = f" loading {library}" if ".so" in library else ""
    elif isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        what = ""
    else:
        return None
    limit, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return f"out of memory{what} (free some memory or use a smaller model)"
    return (
        f"out of memory{what} (address space limited to {_size(limit)} by ulimit -v; raise it or use a smaller model)"
    )


def _unmappable(text: str) -> bool:
    """The dynamic loader's words for a library that did not fit (not the unrelated
    "cannot allocate memory in static TLS block", a loading-order problem)."""
    return "failed to map segment from shared object" in text or (
        "cannot allocate memory" in text.lower() and "static TLS" not in text
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"
