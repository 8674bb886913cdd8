"""Hosts of a job: hostfile parsing and Slurm node-list expansion into ``Host(name, slots)``.

Hostfile format: one host per line, ``host`` or ``host slots=N``; ``#`` starts a comment.
"""
import dataclasses
import re

from psframe.errors import ConfigError

_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.:\[\]-]+)(?:\s+slots\s*=\s*(?P<slots>\S+))?$")


@dataclasses.dataclass(frozen=True)
class Host:
    """One machine of the job and how many workers it takes."""
    name: str
    slots: int = 1


def parse_hostfile(text, source="hostfile"):
    """Parse hostfile ``text`` into a list of ``Host`` in file order.

    Raises:
        ConfigError: naming the line that is malformed or repeated, and the expected form.
    """
    hosts, seen = [], {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise ConfigError(f"{source}:{number}: {raw.strip()!r} is not 'host' or 'host slots=N'")
        name, slots = match["name"], match["slots"]
        if slots is not None and (not slots.isdigit() or int(slots) < 1):
            raise ConfigError(f"{source}:{number}: slots={slots!r} must be an integer >= 1")
        if name in seen:
            raise ConfigError(f"{source}:{number}: host {name!r} is already listed on line "
                              f"{seen[name]}; list each host once and use slots=N")
        seen[name] = number
        hosts.append(Host(name, int(slots) if slots else 1))
    if not hosts:
        raise ConfigError(f"{source} lists no hosts; write one host per line ('host slots=N')")
    return hosts


def read_hostfile(path):
    """Read and parse the hostfile at ``path``.

    Raises:
        ConfigError: the file cannot be read, or it is malformed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read hostfile {path!r} ({exc.strerror}); pass -H PATH "
                          f"to a readable file") from None
    return parse_hostfile(text, source=str(path))


def _split_top(text, sep=","):
    """Split on ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"Slurm node list {text!r} has an unmatched ']'")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ConfigError(f"Slurm node list {text!r} has an unmatched '['")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_one(pattern):
    match = re.search(r"\[([^\[\]]*)\]", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    out = []
    for item in match.group(1).split(","):
        lo, dash, hi = item.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ConfigError(f"Slurm node list range {item!r} in {pattern!r} is not N or N-M")
        width = len(lo)
        for n in range(int(lo), int(hi if dash else lo) + 1):
            out.extend(_expand_one(f"{head}{n:0{width}d}{tail}"))
    return out


def expand_nodelist(nodelist):
    """Expand a compressed Slurm node list (``psf-h[2-3],gpu[01,07-08]``) into host names.

    Raises:
        ConfigError: the list is malformed.
    """
    names = []
    for part in _split_top(nodelist.strip()):
        names.extend(_expand_one(part))
    if not names:
        raise ConfigError(f"Slurm node list {nodelist!r} names no node")
    return names


def expand_tasks_per_node(spec):
    """Expand ``SLURM_TASKS_PER_NODE`` (``2(x3),1``) into a list of counts."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ConfigError(f"SLURM_TASKS_PER_NODE={spec!r} is not of the form 2(x3),1")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def slurm_hosts(env):
    """Hosts of the current Slurm allocation from ``env`` (``SLURM_JOB_NODELIST`` and, when set,
    ``SLURM_TASKS_PER_NODE`` for slots).

    Raises:
        ConfigError: not inside an allocation, or the variables are malformed.
    """
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ConfigError("SLURM_JOB_NODELIST is not set: run psframe-launch inside an allocation "
                          "(salloc/sbatch), or choose another --launcher")
    names = expand_nodelist(nodelist)
    tasks = env.get("SLURM_TASKS_PER_NODE")
    slots = expand_tasks_per_node(tasks) if tasks else [1] * len(names)
    if len(slots) != len(names):
        slots = [1] * len(names)
    return [Host(n, s) for n, s in zip(names, slots)]
