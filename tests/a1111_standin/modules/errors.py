"""Mirrors modules/errors.py: report() prints an error and keeps going (A1111 never re-raises)."""
import traceback

reported: list[str] = []  # test hook: every message passed to report()


def report(message: str, *, exc_info: bool = False) -> None:
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    reported.append(text)
    print("*** " + text)
