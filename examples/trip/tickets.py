"""The trip example's ticket service: `ticket.issue` issues the ticket, the saga's last step,
which has no compensation. Flight WR 404 is cancelled: its tickets are refused (409), after
the seat and the charge are done, so the saga undoes both.
Run: python3 tickets.py [--port 9103] [--db FILE]."""

from participant import Refused, main

CANCELLED = {"WR 404"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
  ticket TEXT PRIMARY KEY, saga_id TEXT, passenger TEXT, flight TEXT, seat TEXT);
"""
TABLE = "tickets"


def execute(db, cmd):
    trip = cmd.get("payload") or {}
    flight = trip.get("flight", "WR 19")
    if flight in CANCELLED:
        raise Refused(409, f"flight {flight} is cancelled")
    (n,) = db.execute("SELECT COUNT(*) FROM tickets").fetchone()
    ticket = f"TK-{n + 1:06d}"
    seat = cmd["results"]["reserve"]["seat"]
    db.execute(
        "INSERT INTO tickets VALUES (?, ?, ?, ?, ?)",
        (ticket, cmd["saga_id"], trip.get("passenger"), flight, seat),
    )
    return {"ticket": ticket, "seat": seat}


def compensate(db, cmd):
    raise Refused(422, "an issued ticket is not taken back (the step has no compensation)")


if __name__ == "__main__":
    import sys

    main("tickets", sys.modules[__name__], 9103)
