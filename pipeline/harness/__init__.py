"""The eval stage: lm-evaluation-harness on GSM8K, sharded over models x tasks x slices of the test set."""
