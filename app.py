"""MRC Studio: ``python app.py`` serves the studio; ``python app.py users ...`` manages logins.

    python app.py                                   # demo: 127.0.0.1:7860, demo DB + model
    python app.py --model timbrooks/instruct-pix2pix --db team.db --host 0.0.0.0 --auth
    python app.py users add alice --role annotator  # asks for the password
    python app.py users list
    python app.py users remove alice                # deactivates (history keeps the name)

Serving on anything but localhost always requires login (``--auth`` turns it on locally
too); the users and their roles live in the store. See docs/studio.md.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import time
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only for real defaults: None and off flags are described in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from studio.demo import DEFAULT_DB_PATH, DEFAULT_MODEL_PATH

    fmt = _HelpFormatter
    p = argparse.ArgumentParser(
        prog="app.py", description=__doc__.split("\n")[0], formatter_class=fmt
    )
    p.add_argument("--model", default=None,
                   help=f"MRC or stock InstructPix2Pix pipeline: a local folder or a hub id "
                        f"(default: the Shapes demo model in {DEFAULT_MODEL_PATH}, if installed)")  # fmt: skip
    p.add_argument("--reward-model", default=None,
                   help="a reward model folder (python -m train.reward_model) for the Edit tab's "
                        "best of N (default: the shipped Shapes reward model with the demo model)")  # fmt: skip
    p.add_argument("--db", default=str(DEFAULT_DB_PATH),
                   help="the studio's SQLite store (created if missing; the default path gets "
                        "the demo content on first run)")  # fmt: skip
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to serve on; anything but "
                   "localhost requires login")  # fmt: skip
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on")
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda if present, else cpu)"
    )
    p.add_argument("--auth", action="store_true", help="require login even on localhost")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None,
                   help="the two benchmark runs raters compare (default: the two newest runs)")  # fmt: skip
    p.add_argument("--overlap", type=int, default=3, help="raters per item in human evaluation")
    p.add_argument("--gold-percent", type=float, default=20.0,
                   help="share of each rater's pairs that are gold pairs with a known answer, "
                        "in percent (used when the store has gold pairs; 0 turns it off)")  # fmt: skip
    p.add_argument("--reveal", action="store_true",
                   help="after each vote, tell the rater which system was on which side")  # fmt: skip
    sub = p.add_subparsers(dest="command")
    users = sub.add_parser(
        "users", help="manage studio users (stored in --db)", formatter_class=fmt
    )
    users_sub = users.add_subparsers(dest="action", required=True)
    add = users_sub.add_parser("add", help="create a user", formatter_class=fmt)
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("admin", "annotator", "rater"))
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of prompting")  # fmt: skip
    users_sub.add_parser("list", help="list users and roles")
    remove = users_sub.add_parser("remove", help="deactivate a user (their history is kept)")
    remove.add_argument("name")
    passwd = users_sub.add_parser("passwd", help="set a new password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input")  # fmt: skip
    return p


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password (8+ characters): ")
    if getpass.getpass("Repeat the password: ") != first:
        raise SystemExit("The two passwords differ; nothing was changed.")
    return first


def users_command(args: argparse.Namespace) -> int:
    from core.store import Store, StoreError

    store = Store(args.db)
    try:
        if args.action == "add":
            user = store.add_user(args.name, args.role, _read_password(args.password_stdin))
            print(f"Added {user['name']} ({user['role']}) to {store.path}.")
        elif args.action == "list":
            for u in store.list_users():
                state = "active" if u["active"] else "removed"
                print(f"{u['name']:<20} {u['role']:<10} {state:<8} since {u['created_at'][:10]}")
        elif args.action == "remove":
            store.set_active(args.name, False)
            print(f"{args.name} can no longer log in; their reviews and ratings are kept.")
        elif args.action == "passwd":
            store.set_password(args.name, _read_password(args.password_stdin))
            print(f"Password of {args.name} changed.")
    except (StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _step(message: str, started: float) -> None:
    """One line of start-up progress, with the seconds since the start."""
    print(f"[{time.monotonic() - started:5.1f} s] {message}", flush=True)


def serve(args: argparse.Namespace) -> int:
    started = time.monotonic()
    _step("Starting MRC Studio: loading torch, diffusers and gradio (20-60 s on a small CPU)...",
          started)  # fmt: skip
    from core.store import Store, StoreError
    from studio.app import build_demo, create_context, default_evaluation, launch_kwargs
    from studio.auth import LOCAL_USER, is_local_host
    from studio.demo import DEFAULT_DB_PATH, demo_banner, ensure_demo_store, example_inputs
    from studio.model import load_edit_model
    from studio.rating import Evaluation

    login = args.auth or not is_local_host(args.host)
    is_demo_db = Path(args.db).resolve() == Path(DEFAULT_DB_PATH).resolve()
    _step("Opening the store" + (" (the demo set-up)" if is_demo_db else "") + "...", started)
    store = ensure_demo_store(args.db) if is_demo_db else Store(args.db)
    if login and not [u for u in store.list_users() if u["active"] and u["name"] != LOCAL_USER]:
        print(
            f"error: serving on {args.host} requires login, but {store.path} has no users.\n"
            f"Add one first:  python app.py --db {args.db} users add NAME --role admin",
            file=sys.stderr,
        )
        return 2
    _step("Loading the editing model...", started)
    try:
        model = load_edit_model(args.model, args.device, args.reward_model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        campaign = dict(gold_share=args.gold_percent / 100, reveal=args.reveal)
        evaluation = (
            Evaluation(*args.compare, overlap=args.overlap, **campaign)
            if args.compare
            else default_evaluation(store, overlap=args.overlap, **campaign)
        )
        ctx = create_context(
            store, model, login_required=login, evaluation=evaluation,
            banner=demo_banner(store, model) if is_demo_db else "",
            examples=example_inputs(store, limit=8),
        )  # fmt: skip
    except (StoreError, ValueError) as e:  # e.g. --compare names a run that does not exist
        print(f"error: {e}", file=sys.stderr)
        return 2
    _step("Building the interface...", started)
    demo = build_demo(ctx)
    _step("Serving.", started)
    demo.launch(**launch_kwargs(ctx, args.host, args.port))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "users":
        return users_command(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
