"""``slurm``: inside an allocation (``SLURM_JOB_ID`` set), one ``srun`` step starts every process
through the launch agent, which takes its role from ``SLURM_PROCID``. Hosts come from
``SLURM_JOB_NODELIST``; ``--distribution=arbitrary`` with a ``SLURM_HOSTFILE`` listing each task's
node puts every rank exactly where the plan put it."""
import math
import os

from psframe.errors import ConfigError

from ..hosts import Host, slurm_hosts
from .carrier import CarrierBackend


class SlurmBackend(CarrierBackend):
    name = "slurm"
    rank_var = "SLURM_PROCID"

    def hosts(self):
        if not os.environ.get("SLURM_JOB_ID"):
            raise ConfigError("--launcher slurm runs inside an allocation: use salloc/sbatch "
                              "(SLURM_JOB_ID is not set)")
        hosts = slurm_hosts(os.environ)
        # scheduler and servers need no slot: spread workers evenly when the allocation is small
        even = math.ceil(self.config.num_workers / len(hosts))
        return [Host(h.name, max(h.slots, even)) for h in hosts]

    def carrier_command(self, plan, order, agent):
        self.hostfile = os.path.join(self.tmpdir, "tasks")
        with open(self.hostfile, "w", encoding="utf-8") as f:
            f.write("".join(plan.specs[i].host + "\n" for i in order))
        return ["srun", "--ntasks", str(len(order)), "--overcommit", "--kill-on-bad-exit=1",
                "--distribution=arbitrary", "--input=none", "--mpi=none", "--job-name=psframe",
                *agent]

    def carrier_env(self):
        env = dict(os.environ)
        env["SLURM_HOSTFILE"] = self.hostfile
        return env


BACKEND = SlurmBackend
