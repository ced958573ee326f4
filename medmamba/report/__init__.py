"""Segmentation reports: metrics tables (CSV, nnU-Net-style JSON), a self-contained HTML page, PDF, comparisons.

Entry points: `build_report` (also called by `medmamba predict --ref`) and `write_training_report`
(called at the end of `medmamba train`).
"""

from medmamba.report.build import ReportResult, build_report, parse_pred_dirs, report_for_prediction
from medmamba.report.training import parse_training_logs, write_training_report

__all__ = ["ReportResult", "build_report", "parse_pred_dirs", "parse_training_logs", "report_for_prediction",
           "write_training_report"]
