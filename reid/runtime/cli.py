"""The entry point of every command: a `ReidError` becomes one line and exit code 2, Ctrl-C exit 130."""

import sys

from reid.runtime import distributed
from reid.runtime.errors import ReidError


def cli_main(main):
    """Run a CLI entry point: ReidError -> one line on stderr and exit code 2. Under torchrun
    the error is also handed to ``reid.runtime.distributed.on_error`` (torchrun's report)."""
    try:
        return main()
    except ReidError as err:
        # A ReidError raised in a DataLoader worker comes back wrapped with the
        # worker's traceback; its own message is the last line.
        message = str(err).strip().splitlines()[-1]
        message = message.split("ReidError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        distributed.on_error(err)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        distributed.on_error(err)
        raise
