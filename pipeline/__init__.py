"""gsm8k-slurm: evaluate, fine-tune and make two LLMs debate on GSM8K as SLURM batch jobs."""

import logging

# bitsandbytes logs on every import, on a CPU, that an optional kernels package is missing: noise, not news.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
