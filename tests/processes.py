"""The environment of the processes the tests start: CPU processes (gloo), one thread each.

On a GPU machine a child process would otherwise take the GPU: a 2-process run would then look for
``cuda:1`` on a machine with one GPU, and a 1-process run would compute on the GPU what its 2-process
twin computes on the CPU. The tests prove the logic on CPUs, as CI runs them, on any machine."""

import os


def cpu_env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="", **extra)
