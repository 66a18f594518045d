"""`python -m reid.report RESULTS.json`: (re)write robustness.csv / robustness.png next to a
results.json. The command keeps this path (the docs and users' scripts call it); the report's code
is `reid.evaluation.report`."""

import sys

from reid.evaluation import report
from reid.runtime import cli_main


if __name__ == "__main__":
    cli_main(lambda: report.main(sys.argv[1:]))
