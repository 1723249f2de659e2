"""A vote-like call on random weights, for the benchmarks that time one (bench_graphs.py, bench_overlap.py): rows of
random left-padded prompts, sampled with a seed a row, stopping at spread lengths. Random weights never write a real
stop token, so a row stops at any token of a fixed share of the vocabulary (every ``--stop-every``-th id), and the
batch shrinks through its row buckets as a real vote's does."""

from __future__ import annotations

import argparse

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The call's shape: rows, prompt lengths, new tokens, temperature, stop ids."""
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rows", type=int, default=1536, help="1,536: a group's whole vote of 6 in one batch "
                        "(debate.vote_batch_rows=1536); 256: one of the six batches a default run makes (debate.batch_size)")
    parser.add_argument("--prompt-min", type=int, default=120)
    parser.add_argument("--prompt-max", type=int, default=320)
    parser.add_argument("--new", type=int, default=512, help="new tokens at most (debate.max_new_tokens)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--stop-every", type=int, default=300, help="every this-many-th token id stops a row")


def prompts(args: argparse.Namespace, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``args.rows`` random prompts of ``--prompt-min`` to ``--prompt-max`` tokens, left-padded with 0: ids and mask."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.prompt_min, args.prompt_max + 1, (args.rows,), generator=generator)
    width = int(lengths.max())
    ids = torch.randint(0, vocab, (args.rows, width), generator=generator)
    mask = (torch.arange(width)[None] >= width - lengths[:, None]).long()
    return (ids * mask).to(device), mask.to(device)


def stop_ids(args: argparse.Namespace, vocab: int) -> list[int]:
    """Every ``--stop-every``-th id of the vocabulary."""
    return list(range(args.stop_every - 1, vocab, args.stop_every))
