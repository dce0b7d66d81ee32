"""moto_server without moto's model instance tracking, for the infra tests.

moto keeps every model object it ever creates in a class-level list (`instances_tracked`, read
only by its web dashboard), so nothing it creates is ever freed. DynamoDB's TransactWriteItems
deep-copies each table it touches once per action, and every copied item is kept: on moto 5.2.1,
30 transactions of 100 puts on a 1,000-item table grow the server by about 2 GB. The exactly-once
suite runs thousands of them. Usage: python moto-server.py [moto_server arguments].
"""

import sys

from moto.core.common_models import BaseModel


def _untracked_new(cls, *args, **kwargs):
    return object.__new__(cls)


BaseModel.__new__ = staticmethod(_untracked_new)

from moto.server import main  # noqa: E402 (after the patch, so every model class sees it)

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    sys.exit(main())
