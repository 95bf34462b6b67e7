"""nash-ds entry point.

    # the embedded demo (tiny T5, bundled task), all stages, 2 CPU ranks or 2 GPUs
    deepspeed --num_gpus 2 run.py pipeline

    # one stage with a config and overrides
    deepspeed --num_gpus 8 run.py finetune --config configs/t5_large_samsum.yaml train.lr=1e-4
    deepspeed --num_gpus 8 run.py prune --config configs/t5_large_samsum.yaml prune.method=nash
    python run.py finalize --config configs/t5_large_samsum.yaml      # rank 0 work, one process
    python run.py evaluate --config configs/t5_large_samsum.yaml

    # torchrun works too
    torchrun --nproc_per_node 8 run.py prune --config configs/t5_large_samsum.yaml

    # Slurm, N nodes x G GPUs (see launch/ and the README)
    sbatch -N 2 --gpus-per-node 8 launch/nash.sbatch prune --config configs/t5_large_samsum.yaml
"""

from nash_ds.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main())
