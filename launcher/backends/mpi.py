"""``mpi``: one Open MPI ``mpirun`` starts every process (scheduler, servers, workers) through
the launch agent, which takes its role from ``OMPI_COMM_WORLD_RANK``. With ``-H`` the hosts go
to ``--host h:k,...`` with k = processes planned there, so mpirun's by-slot mapping puts each
rank exactly where the plan put it."""
import os

from ..hosts import Host, read_hostfile
from .carrier import CarrierBackend
from .local import LOCAL_HOST


class MpiBackend(CarrierBackend):
    name = "mpi"
    rank_var = "OMPI_COMM_WORLD_RANK"

    def hosts(self):
        if self.config.hostfile:
            return read_hostfile(self.config.hostfile)
        return [Host(LOCAL_HOST, self.config.num_workers)]

    def carrier_command(self, plan, order, agent):
        cmd = ["mpirun", "-np", str(len(order)), "--oversubscribe"]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        if [h.name for h in plan.hosts] == [LOCAL_HOST]:
            # keep Open MPI's own traffic on loopback (it advertises every interface otherwise)
            cmd += ["--mca", "oob_tcp_if_include", "lo", "--mca", "btl_tcp_if_include", "lo"]
        else:
            counts = {}
            for spec in plan.specs:
                counts[spec.host] = counts.get(spec.host, 0) + 1
            cmd += ["--host", ",".join(f"{h.name}:{counts[h.name]}" for h in plan.hosts
                                       if h.name in counts)]
        return cmd + agent


BACKEND = MpiBackend
