"""The debate stage: two chat models take turns on each problem; shards of problems, then a reducer."""
