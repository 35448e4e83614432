"""SLURM executor: the stage graph as array jobs (one per stage, task i = shard i) chained with
afterok. ``jobs`` lists a run's jobs, ``resources`` what each asks for, ``script`` writes its
sbatch file, ``cluster`` talks to SLURM, ``submit`` submits, ``status`` reports, ``commands``
holds `mapd submit` / `mapd status`."""
