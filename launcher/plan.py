"""Pure placement: ``LaunchConfig`` + hosts -> the list of ``ProcessSpec`` to start, with ranks
fixed by placement (never by arrival) and the whole child environment built here and only here.

Launch order, which is also the order of ``Plan.specs``: scheduler, servers 0..S-1, workers
0..N-1. Workers fill hosts' slots in host order; servers go round-robin over hosts; the scheduler
runs on the first host.
"""
import dataclasses
import os

from psframe import config as envc
from psframe.errors import ConfigError
from psframe.transport.addresses import tcp

# Variables the launcher owns; --env may not override them (it would break rank assignment).
RESERVED = (envc.ROLE, envc.SCHEDULER, envc.LOCAL_RANK, envc.LOCAL_SIZE, envc.HOST,
            envc.JOB_ID, envc.SECURITY, envc.CREDENTIALS, envc.CREDENTIALS_FILE, envc.RESTART) + tuple(
    v for role in envc.ROLES.values() for v in (role.count_env, role.rank_env) if v)


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """What to run, where, and with which job variables (``env``: only what the launcher adds;
    ``child_env`` merges it over a base environment)."""
    role: str
    index: int          # worker rank, server rank, or 0 for the scheduler
    host: str
    local_rank: int
    local_size: int
    command: tuple
    env: dict
    cwd: str

    @property
    def identity(self):
        """``worker:3`` / ``server:0`` / ``scheduler``: who this process is on the wire."""
        return f"{self.role}:{self.index}" if envc.ROLES[self.role].rank_env else self.role

    @property
    def label(self):
        """``worker 3@host`` / ``server 0@host`` / ``scheduler@host``, the output prefix."""
        who = f"{self.role} {self.index}" if envc.ROLES[self.role].rank_env else self.role
        return f"{who}@{self.host}"


@dataclasses.dataclass(frozen=True)
class Plan:
    scheduler: str      # tcp://host:port
    specs: tuple
    hosts: tuple

    def by_role(self, role):
        return [s for s in self.specs if s.role == role]


def place_workers(hosts, num_workers):
    """Host index of each worker rank: fill each host's slots in order.

    Raises:
        ConfigError: fewer slots than workers.
    """
    total = sum(h.slots for h in hosts)
    if total < num_workers:
        raise ConfigError(f"-n {num_workers} needs {num_workers} slots but the hosts give {total} "
                          f"({', '.join(f'{h.name} slots={h.slots}' for h in hosts)}); add "
                          f"'slots=N' to the hostfile or lower -n")
    placement = []
    for index, host in enumerate(hosts):
        take = min(host.slots, num_workers - len(placement))
        placement.extend([index] * take)
    return placement


# How a role's processes are spread over the hosts: host index of each rank.
PLACEMENTS = {
    "first_host": lambda hosts, n: [0] * n,
    "round_robin": lambda hosts, n: [i % len(hosts) for i in range(n)],
    "slots": place_workers,
}


def _local_ranks(host_indexes):
    counts, ranks = {}, []
    for h in host_indexes:
        ranks.append(counts.get(h, 0))
        counts[h] = counts.get(h, 0) + 1
    return ranks, counts


def make_plan(config, hosts, scheduler_port, job_id="", restart=0):
    """Place every process of the job. Pure: no I/O, no clock, no randomness (the caller picks
    ``job_id``, the tag every process of the job carries in ``PSFRAME_JOB_ID``). ``restart``:
    how many times the job was restarted before this run (``PSFRAME_RESTART``, set when > 0).

    Raises:
        ConfigError: slots do not suffice, or ``--env`` tries to set a launcher-owned variable.
    """
    hosts = tuple(hosts)
    for key, _ in config.env:
        if key in RESERVED:
            raise ConfigError(f"--env {key}=...: {key} is set by psframe-launch from the placement "
                              f"and cannot be overridden")
    counts = {"num_workers": config.num_workers, "num_servers": config.num_servers or len(hosts)}
    scheduler = tcp(hosts[0].name, scheduler_port)
    common = dict(config.env)
    common.update({envc.SCHEDULER: scheduler})
    common.update({role.count_env: str(counts[role.count]) for role in envc.ROLES.values() if role.count})
    common.update({
        envc.KVSTORE: config.kvstore,
        envc.START_TIMEOUT: repr(float(config.start_timeout)),
        "PYTHONUNBUFFERED": "1",   # so every line reaches the launcher as it is printed
    })
    if not config.host_tier:
        common[envc.HIERARCHICAL] = "0"
    if job_id:
        common[envc.JOB_ID] = job_id
    if restart:
        common[envc.RESTART] = str(restart)
    if config.optimizer_modules:
        common[envc.USER_MODULES] = os.pathsep.join(config.optimizer_modules)
    python = config.python
    specs = []

    def add(role, index, host_index, local_rank, local_size, command, extra):
        host = hosts[host_index].name
        env = dict(common)
        env.update({envc.ROLE: role, envc.HOST: host, envc.LOCAL_RANK: str(local_rank),
                    envc.LOCAL_SIZE: str(local_size)})
        env.update(extra)
        specs.append(ProcessSpec(role, index, host, local_rank, local_size, tuple(command), env,
                                 config.cwd))

    for role in envc.ROLES.values():       # in launch order
        host_of = PLACEMENTS[role.placement](hosts, counts[role.count] if role.count else 1)
        local, per_host = _local_ranks(host_of)
        command = ((python, "-m", role.module) if role.module
                   else (python, config.script, *config.script_args))
        for rank, h in enumerate(host_of):
            add(role.name, rank, h, local[rank], per_host[h], command,
                {role.rank_env: str(rank)} if role.rank_env else {})
    return Plan(scheduler, tuple(specs), hosts)


def with_security(plan, mode, credentials=None):
    """``plan`` with each process's security mode and its own credentials (``credentials``:
    identity -> ``Credentials`` of every spec; None for ``none``) in its job environment, which
    every backend hands over without an argv (env, ssh stdin, 0600 plan file)."""
    specs = []
    for spec in plan.specs:
        env = dict(spec.env, **{envc.SECURITY: mode})
        if credentials is not None:
            env[envc.CREDENTIALS] = credentials[spec.identity].to_text()
        specs.append(dataclasses.replace(spec, env=env))
    return dataclasses.replace(plan, specs=tuple(specs))


def child_env(spec, base):
    """The complete environment of ``spec``'s process (see ``merge_env``)."""
    return merge_env(spec.env, base)


def merge_env(job_env, base):
    """``base`` (the environment the process would inherit on its host) without any
    ``PSFRAME_*`` (a stale value from an outer job must never leak in), plus ``job_env``.
    Remote agents call this too, so the rule lives in one place."""
    env = {k: v for k, v in base.items() if not k.startswith("PSFRAME_")}
    env.update(job_env)
    return env
