"""``psframe-bench``: push/pull timings of real jobs against baselines of the same run."""


def main(argv=None):
    """Console entry point (``psframe-bench = psframe.bench:main``)."""
    from .cli import main as _main
    return _main(argv)
