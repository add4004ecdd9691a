"""Offline stand-in for the get-pip bootstrap script that ansible-test downloads.

ansible-test bootstraps pip in each virtual environment it creates by running
``~/.ansible/test/cache/get_pip_<version>.py`` with pip install arguments such as
``pip==24.2 --no-setuptools --no-wheel``.  It downloads that script from a host that
is not reachable from here unless the file already exists, so ``make`` copies this
file there.  It installs the pip bundled with Python (ensurepip) and then lets that
pip install the requested packages from the package index.
"""

import subprocess
import sys

# get-pip.py's own options that "pip install" does not know.
GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True, stdout=subprocess.DEVNULL)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
    if not args or all(arg.startswith("-") for arg in args):
        return 0
    return subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
