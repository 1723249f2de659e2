"""The debate stage: two chat models take turns on each problem; shards of problems, then a reducer.

Its plug-in object, ``STAGE``, is what the rest of the suite sees of it (``pipeline.stage``).
"""

from pipeline.debate.checks import check_debate, check_first_prompt
from pipeline.debate.settings import DebateSettings
from pipeline.debate.units import PLOTS, TABLE, debate_schema, debate_units
from pipeline.stage import Stage

STAGE = Stage("debate", check_debate, debate_units, "pipeline.debate.shard:run_debate_shard", "pipeline.reduce.debate:reduce_debate",
              TABLE, PLOTS, "problems", schema=debate_schema, settings=DebateSettings,
              token_keys=("debate.max_new_tokens",), check_model=check_first_prompt)
