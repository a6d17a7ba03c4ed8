"""Launch-time helpers: the memory planner, the Slurm job resolver and the small CLIs the sbatch scripts call.

Everything a launcher needs to *decide* lives here, in Python, so the scripts in ``slurm/`` only set up the
environment and run commands that these modules compute:

* :mod:`.settings`      LaunchError and the type of the config's ``launch:`` section (node counts, GPUs)
* :mod:`.plan`          per-GPU memory estimate and rollout KV budget; rejects impossible layouts
* :mod:`.slurm_env`     the job's node lists, ports, URLs and every step's command line, as shell-safe assignments
* :mod:`.wait_healthy`  wait for HTTP health endpoints with a deadline
* :mod:`.serve`         exec an SGLang server / sglang-router for one Slurm task
* :mod:`.ranks`         start the trainer ranks of one node (torchrun, or one Slurm task per rank)

Nothing here imports megatron or torch.distributed (docs/architecture.md [conv-no-dist-in-data]).
"""
