"""The eval stage: lm-evaluation-harness on GSM8K, sharded over models x tasks x slices of the test set.

Its plug-in object, ``STAGE``, is what the rest of the suite sees of it (``pipeline.stage``).
"""

from pipeline.harness.checks import check_eval
from pipeline.harness.settings import EvalSettings
from pipeline.harness.units import PLOTS, TABLE, describe_eval, eval_schema, eval_units
from pipeline.stage import Stage

STAGE = Stage("eval", check_eval, eval_units, "pipeline.harness.shard:run_eval_shard", "pipeline.reduce.eval:reduce_eval",
              TABLE, PLOTS, "samples", schema=eval_schema, settings=EvalSettings,
              models=lambda config: list(config.eval.models), token_keys=("eval.max_gen_toks",), describe=describe_eval)
