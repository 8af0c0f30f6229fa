"""back: the end of the chain. `back.py PORT`; every GET returns "ok"."""

from flask import Flask

from common import port_arg, serve

app = Flask("back")


@app.route("/", defaults={"rest": ""})
@app.route("/<path:rest>")
def work(rest):
    return "ok\n"


if __name__ == "__main__":
    serve(app, port_arg(1))
