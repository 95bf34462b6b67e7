"""Torch threads per rank on CPU: the node's cores shared by its ranks, unless the user chose."""

from __future__ import annotations

import os

from nash_ds.dist import ranks_on_node, threads_per_rank

CORES = len(os.sched_getaffinity(0))


def test_cores_are_divided_by_the_ranks_on_the_node():
    assert threads_per_rank({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"})[0] == max(1, CORES // 2)  # torchrun, srun
    assert threads_per_rank({"LOCAL_SIZE": "2", "WORLD_SIZE": "4"})[0] == max(1, CORES // 2)  # deepspeed launcher
    assert threads_per_rank({})[0] == CORES  # one process
    assert threads_per_rank({"LOCAL_WORLD_SIZE": "64", "WORLD_SIZE": "64"})[0] == max(1, CORES // 64)
    assert threads_per_rank({"LOCAL_WORLD_SIZE": str(4 * CORES), "WORLD_SIZE": str(4 * CORES)})[0] == 1


def test_user_choice_wins_and_a_world_of_one_is_alone_on_its_node():
    threads, why = threads_per_rank({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"})
    assert threads is None and "OMP_NUM_THREADS=3" in why
    # plain `python run.py` inside an sbatch with --ntasks-per-node 8: still one process
    assert threads_per_rank({"SLURM_NTASKS_PER_NODE": "8", "WORLD_SIZE": "1"})[0] == CORES


def test_ranks_on_node_reads_the_launchers_variables():
    assert ranks_on_node({"SLURM_NTASKS_PER_NODE": "4(x2)"}) == 4
    assert ranks_on_node({"LOCAL_WORLD_SIZE": "8", "LOCAL_SIZE": "2"}) == 8
    assert ranks_on_node({"LOCAL_SIZE": "bad"}) == 1
