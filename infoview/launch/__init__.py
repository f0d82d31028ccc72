"""Launch any infoview command on SLURM (or locally) through submitit: ``infoview launch``.

See :mod:`infoview.launch.command` for the keys and :mod:`infoview.launch.job`
for what runs inside a job (distributed set-up, pre-emption and requeue).
``scripts/slurm-local.sh`` starts a one-node cluster to try it on a laptop.
"""
