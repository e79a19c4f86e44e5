"""Studies: the paper's experiment grids as files (Kumar et al. 2306.06010).

A study file names axes (tasks × archs × pretrain data × subset sizes × complexity × seeds) and
the downstream steps every pretrained cell goes through. :mod:`.spec` reads and validates it and
expands it into runs, each an ordinary ``dalivssl`` command in its own directory; :mod:`.runner`
executes the runs not yet done (locally, or on SLURM through submitit); :mod:`.results` reads what
the commands wrote into one tidy table and the paper's views. Nothing imports this package.
"""
