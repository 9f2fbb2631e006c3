"""Passes over sbc IR and the manager that runs them."""

from sbc.passes.base import Pass, PassResult, RewriteRule, available_passes, get_pass, register_pass
from sbc.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline, run_passes

__all__ = ["DEFAULT_PIPELINE", "Pass", "PassManager", "PassResult", "RewriteRule",
           "available_passes", "get_pass", "parse_pipeline", "register_pass", "run_passes"]
