"""The trip example's seat service: `seat.reserve` holds a seat of the trip's class,
`seat.release` gives it back. A class with no seats left refuses (409): `"class": "first"` is
sold out on every flight of this demo. Run: python3 seats.py [--port 9101] [--db FILE]."""

from participant import Refused, main

# Seats per class and flight; first class is sold out.
CAPACITY = {"economy": 120, "business": 8, "first": 0}
FIRST_ROW = {"economy": 10, "business": 3, "first": 1}

SCHEMA = """
CREATE TABLE IF NOT EXISTS seats (
  saga_id TEXT PRIMARY KEY, flight TEXT, class TEXT, seat TEXT, released INTEGER DEFAULT 0);
"""
TABLE = "seats"


def execute(db, cmd):
    trip = cmd.get("payload") or {}
    flight, cls = trip.get("flight", "WR 19"), trip.get("class", "economy")
    if cls not in CAPACITY:
        raise Refused(422, f"there is no {cls!r} class on flight {flight}")
    (held,) = db.execute(
        "SELECT COUNT(*) FROM seats WHERE flight = ? AND class = ? AND released = 0",
        (flight, cls),
    ).fetchone()
    if held >= CAPACITY[cls]:
        raise Refused(409, f"{cls} class is sold out on flight {flight}")
    (n,) = db.execute(
        "SELECT COUNT(*) FROM seats WHERE flight = ? AND class = ?", (flight, cls)
    ).fetchone()
    seat = f"{FIRST_ROW[cls] + n // 6}{'ABCDEF'[n % 6]}"
    db.execute(
        "INSERT INTO seats (saga_id, flight, class, seat) VALUES (?, ?, ?, ?)",
        (cmd["saga_id"], flight, cls, seat),
    )
    return {"seat": seat, "flight": flight, "class": cls}


def compensate(db, cmd):
    seat = cmd["results"]["reserve"]["seat"]
    db.execute("UPDATE seats SET released = 1 WHERE saga_id = ?", (cmd["saga_id"],))
    return {"released": seat}


if __name__ == "__main__":
    import sys

    main("seats", sys.modules[__name__], 9101)
