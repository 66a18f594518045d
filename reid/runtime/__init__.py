"""What every stage uses: user errors and the command entry point, input checks, files written
atomically, seeding, devices, progress, several processes (torchrun) and mixed precision.
"""

from reid.runtime.checks import MAX_SEED, check_input_dir, check_number, check_writable_dir
from reid.runtime.cli import cli_main
from reid.runtime.devices import resolve_device
from reid.runtime.errors import ReidError, first_message_line
from reid.runtime.files import atomic_path, file_sha256, link_or_copy, load_torch_file, run_lock
from reid.runtime.progress import progress
from reid.runtime.seeding import image_generator, seed_everything

__all__ = ["MAX_SEED", "ReidError", "atomic_path", "check_input_dir", "check_number", "check_writable_dir", "cli_main",
           "file_sha256", "first_message_line", "image_generator", "link_or_copy", "load_torch_file", "progress",
           "resolve_device", "run_lock", "seed_everything"]
