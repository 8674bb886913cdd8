"""``python -m psframe_launcher.credentials``: credentials for a job started by hand.

Writes one 0600 file per process of the job into a new 0700 directory; start each process with
``PSFRAME_SECURITY=<mode> PSFRAME_CREDENTIALS_FILE=<dir>/<its file>`` (files: ``scheduler``,
``server-0``..., ``worker-0``...). Copy each file only to the host that runs that process."""
import argparse
import os
import sys

from psframe.errors import ConfigError
from psframe.transport import credentials


def write_job(directory, mode, num_workers, num_servers):
    """Generate the job's credentials into ``directory`` (created 0700, must not exist);
    returns the file of each identity."""
    os.mkdir(directory, 0o700)
    files = {}
    for name, creds in credentials.generate(mode, credentials.identities(num_workers, num_servers)).items():
        files[name] = os.path.join(directory, name.replace(":", "-"))
        credentials.write_file(files[name], creds)
    return files


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m psframe_launcher.credentials", description=__doc__)
    p.add_argument("--security", choices=("curve", "token"), default="curve")
    p.add_argument("-n", dest="num_workers", type=int, required=True)
    p.add_argument("-s", dest="num_servers", type=int, default=1)
    p.add_argument("directory", help="new directory for the files (must not exist)")
    ns = p.parse_args(argv)
    try:
        files = write_job(ns.directory, ns.security, ns.num_workers, ns.num_servers)
    except (OSError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
