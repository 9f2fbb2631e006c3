"""PrimFunc rule that schedules block by block, each block with the first block rule that fits."""

from __future__ import annotations

import logging

from sbc.codegen.schedule_cpu.common import block_info, hoist_inits

log = logging.getLogger(__name__)


class PerBlock:
    """Takes any PrimFunc (it always applies, so it comes last). Each block gets the first of
    `rules` whose `apply(sch, block_info, target)` returns True; a rule that raises is undone
    and the next one tried, so scheduling can leave a kernel slow but never breaks
    compilation. A block no rule takes stays as it is."""

    def __init__(self, *rules):
        self.rules = rules

    def apply(self, sch, blocks, target):
        for name in [b.name for b in blocks]:
            for rule in self.rules:
                snapshot = sch.copy()
                try:
                    info = block_info(sch, name)
                    if info is not None and rule.apply(sch, info, target):
                        break
                except Exception as e:  # the rule does not fit this block: undo, try the next
                    log.debug("rule %s failed on block %s: %s", type(rule).__name__, name, e)
                    sch = snapshot
        return hoist_inits(sch)
