"""SLURM executor: the pipeline as array jobs (one per stage x model, task i = shard i) chained
with afterok. ``slurm.jobs`` lists the jobs, ``slurm.submit`` writes and submits their sbatch
scripts, ``slurm.status`` reports on them, ``slurm.cli`` holds `mapd submit` / `mapd status`."""
