"""How the launcher starts processes. ``REGISTRY`` is the one list of backends: the name
``--launcher`` takes, mapped to the module here whose ``BACKEND`` class runs them; a new
backend is a module and one entry."""

REGISTRY = {"local": "local", "ssh": "ssh", "mpi": "mpi", "slurm": "slurm"}
