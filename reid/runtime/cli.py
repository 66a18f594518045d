"""The entry point of every command: a `ReidError` becomes one line and exit code 2, Ctrl-C exit 130."""

import _thread
import signal
import sys
import threading
import time

from reid.runtime import distributed
from reid.runtime.errors import ReidError

_STATE = {"interrupted": False}
REDELIVER_DELAY = 0.05  # seconds: out of the __del__ or at-fork callback that swallowed a Ctrl-C


def _on_sigint(signum, frame):
    _STATE["interrupted"] = True
    raise KeyboardInterrupt


def _unraisable(hook, args):
    """A Ctrl-C that lands in code whose exceptions Python ignores (a `__del__`, such as a
    DataLoader iterator's joining its workers, or an at-fork callback as a DataLoader starts
    them) is swallowed there ("Exception ignored in ..."): it is raised again in the main
    thread, out of that place (`_redeliver`); one swallowed again comes back here."""
    try:
        if issubclass(args.exc_type, KeyboardInterrupt):
            return _redeliver()
        if not _STATE["interrupted"]:  # after a Ctrl-C: its echoes (a half-built DataLoader iterator's __del__)
            hook(args)
    except KeyboardInterrupt:
        _redeliver()


def _redeliver():
    """Run the SIGINT handler again in the main thread shortly (`interrupt_main` from another
    thread: the main thread raises at its next instruction), once the code that swallowed
    the first one has returned."""
    def later():
        time.sleep(REDELIVER_DELAY)
        _thread.interrupt_main()

    threading.Thread(target=later, daemon=True).start()


def cli_main(main):
    """Run a CLI entry point: ReidError -> one line on stderr and exit code 2, Ctrl-C -> exit
    130, also when the Ctrl-C was swallowed where Python ignores exceptions (see `_unraisable`;
    an error that follows it, such as a loader worker killed by the same Ctrl-C, is the
    interruption too). Under torchrun the error is also handed to
    ``reid.runtime.distributed.on_error`` (torchrun's report)."""
    handlers = None
    if threading.current_thread() is threading.main_thread():
        handlers = signal.signal(signal.SIGINT, _on_sigint), sys.unraisablehook
        sys.unraisablehook = lambda args, hook=sys.unraisablehook: _unraisable(hook, args)
    _STATE["interrupted"] = False
    try:
        result = main()
        if _STATE["interrupted"]:
            raise KeyboardInterrupt
        return result
    except KeyboardInterrupt:
        _interrupted()
    except ReidError as err:
        if _STATE["interrupted"]:
            _interrupted()
        # A ReidError raised in a DataLoader worker comes back wrapped with the
        # worker's traceback; its own message is the last line.
        message = str(err).strip().splitlines()[-1]
        message = message.split("ReidError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        distributed.on_error(err)
        sys.exit(2)
    except Exception as err:
        if _STATE["interrupted"]:
            _interrupted()
        distributed.on_error(err)
        raise
    finally:
        if handlers is not None:
            signal.signal(signal.SIGINT, handlers[0])
            sys.unraisablehook = handlers[1]


def _interrupted():
    print("interrupted", file=sys.stderr)
    sys.exit(130)
