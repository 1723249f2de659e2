"""The train stage: ORPO fine-tuning (TRL) of a PEFT LoRA adapter, optionally QLoRA, under DeepSpeed ZeRO."""
