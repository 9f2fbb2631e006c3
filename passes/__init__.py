"""Passes over sbc IR and the manager that runs them (see sbc.passes.manager for the
pipeline syntax and sbc.passes.base for Pass, PassResult, RewriteRule and the registry)."""

from sbc.passes.base import (Match, Miss, Pass, PassResult, RewriteRule, RulePass, apply_rules,
                             available_passes, explain, get_pass, register_pass)
from sbc.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline, run_passes

__all__ = ["DEFAULT_PIPELINE", "Match", "Miss", "Pass", "PassManager", "PassResult", "RewriteRule",
           "RulePass", "apply_rules",
           "available_passes", "explain", "get_pass", "parse_pipeline", "register_pass",
           "run_passes"]
