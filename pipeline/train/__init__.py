"""The train stage: ORPO fine-tuning (TRL) of a PEFT LoRA adapter, optionally QLoRA, under DeepSpeed ZeRO.

Its plug-in object, ``STAGE``, is what the rest of the suite sees of it (``pipeline.stage``).
"""

from pipeline.stage import Stage
from pipeline.train.checks import check_train
from pipeline.train.settings import TrainSettings
from pipeline.train.units import PLOTS, TABLE, train_progress, train_units

STAGE = Stage("train", check_train, train_units, "pipeline.train.job:run_train", "pipeline.reduce.train:reduce_train",
              TABLE, PLOTS, "steps", train_progress, per_gpu=True, settings=TrainSettings)
