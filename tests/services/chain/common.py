"""Shared by the Flask services of the test chain (front -> middle -> back).

Each service listens on 127.0.0.1 on the port given as its first argument and is run with
Debian's /usr/bin/python3 (through a symlink named after the service, so that each process
has its own comm). Flask's development server runs threaded, without the reloader.
"""

import sys

import requests

TIMEOUT_S = 10


def get(url, headers):
    """One GET on a fresh connection, ignoring any proxy settings of the environment."""
    with requests.Session() as s:
        s.trust_env = False
        r = s.get(url, headers=headers, timeout=TIMEOUT_S)
        return r.status_code, r.text


def serve(app, port):
    """Runs the development server (threaded, no reloader); the tests poll the port."""
    app.run(host="127.0.0.1", port=port, threaded=True, use_reloader=False, debug=False)


def port_arg(i):
    return int(sys.argv[i])
