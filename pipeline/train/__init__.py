"""The train stage: ORPO fine-tuning (TRL) of a PEFT LoRA adapter, optionally QLoRA, under DeepSpeed ZeRO.

Its plug-in object, ``STAGE``, is what the rest of the suite sees of it (``pipeline.stage``).
"""

from pipeline.stage import Stage
from pipeline.train.checks import check_train, check_training
from pipeline.train.settings import TrainSettings
from pipeline.train.units import PLOTS, TABLE, describe_training, train_progress, train_units

STAGE = Stage("train", check_train, train_units, "pipeline.train.job:run_train", "pipeline.reduce.train:reduce_train",
              TABLE, PLOTS, "steps", train_progress, per_gpu=True, settings=TrainSettings,
              models=lambda config: list(config.train.models), token_keys=("train.max_length",),
              check_models=check_training, describe=describe_training)
