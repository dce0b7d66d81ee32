"""moto_server for the infra tests: without moto's model instance tracking, and without per-request
work whose result never changes.

- moto keeps every model object it ever creates in a class-level list (`instances_tracked`, read
  only by its web dashboard), so nothing it creates is ever freed. DynamoDB's TransactWriteItems
  deep-copies each table it touches once per action, and every copied item is kept: on moto 5.2.1,
  30 transactions of 100 puts on a 1,000-item table grow the server by about 2 GB. The
  exactly-once suite runs thousands of them.
- The infra suite's time is mostly moto's CPU (one core: the GIL), about 4 ms per PutItem. On every
  request moto lists and stats its own package directory (`list_of_moto_modules`, ~150 stat calls)
  and walks the response class with `inspect.getmembers` (`method_names_from_class`); werkzeug
  logs a line per request (the test runner keeps only a tail of the output, for errors). Each is cached or silenced here when it exists
  (a moto without them runs unchanged).

Usage: python moto-server.py [moto_server arguments].
"""

import functools
import logging
import sys

from moto.core.common_models import BaseModel


def _untracked_new(cls, *args, **kwargs):
    return object.__new__(cls)


BaseModel.__new__ = staticmethod(_untracked_new)

import moto.backends  # noqa: E402
import moto.core.responses  # noqa: E402

if hasattr(moto.backends, "list_of_moto_modules"):
    # The package directory does not change while the server runs.
    _MODULES = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: _MODULES
if hasattr(moto.core.responses, "method_names_from_class"):
    # A response class's methods do not change either.
    moto.core.responses.method_names_from_class = functools.lru_cache(maxsize=None)(
        moto.core.responses.method_names_from_class
    )
logging.getLogger("werkzeug").setLevel(logging.WARNING)

from moto.server import main  # noqa: E402 (after the patches, so every model class sees them)

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    sys.exit(main())
