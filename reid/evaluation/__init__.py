"""The evaluation of any re-ID model clean and under attack: options, the one attack path over a
split, features, metrics, transfer, the robustness report and the files a run writes.

`evaluate_robustness` (also `reid.evaluate_robustness`) is the public entry point.
"""

from reid.evaluation.features import evaluate
from reid.evaluation.options import OPTION_NAMES, Options, check_options, default_out
from reid.evaluation.run import evaluate_robustness, run_evaluation
from reid.evaluation.tables import format_metrics

__all__ = ["OPTION_NAMES", "Options", "check_options", "default_out", "evaluate", "evaluate_robustness",
           "format_metrics", "run_evaluation"]
