"""Many runs: ``sweep`` (plans of run configs, leave-one-domain-out, running them), ``launchers``
(local processes, Slurm through submitit, Ray) and ``cost`` (what a run or a sweep will take).
A sweep is a list of runs; a run folder is all the state there is."""
