"""`python -m reid.data.synthetic OUT [options]`: write a synthetic dataset (see `reid.data.synthetic`)."""

from reid.data.synthetic.writer import main
from reid.runtime import cli_main

cli_main(main)
