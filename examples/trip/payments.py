"""The trip example's payment service: `card.charge` charges the trip's fare to its card,
`card.refund` refunds the charge whose id the charge returned (the compensation's
`results.charge.charge_id`). The card 4000 0000 0000 0002 is declined (422), like a
payment provider's test card. Run: python3 payments.py [--port 9102] [--db FILE]."""

import uuid

from participant import Refused, main

DECLINED = {"4000000000000002"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
  charge_id TEXT PRIMARY KEY, saga_id TEXT, card_last4 TEXT, amount INTEGER,
  refund_id TEXT);
"""
TABLE = "charges"


def execute(db, cmd):
    trip = cmd.get("payload") or {}
    card = str(trip.get("card", "4242 4242 4242 4242")).replace(" ", "")
    amount = trip.get("fare", 0)
    if card in DECLINED:
        raise Refused(422, "card declined")
    charge_id = "ch_" + uuid.uuid4().hex[:12]
    db.execute(
        "INSERT INTO charges (charge_id, saga_id, card_last4, amount) VALUES (?, ?, ?, ?)",
        (charge_id, cmd["saga_id"], card[-4:], amount),
    )
    return {"charge_id": charge_id, "amount": amount}


def compensate(db, cmd):
    charge_id = cmd["results"]["charge"]["charge_id"]
    row = db.execute("SELECT amount FROM charges WHERE charge_id = ?", (charge_id,)).fetchone()
    if row is None:
        raise Refused(422, f"no charge {charge_id}")
    refund_id = "re_" + uuid.uuid4().hex[:12]
    db.execute("UPDATE charges SET refund_id = ? WHERE charge_id = ?", (refund_id, charge_id))
    return {"refund_id": refund_id, "charge_id": charge_id, "amount": row["amount"]}


if __name__ == "__main__":
    import sys

    main("payments", sys.modules[__name__], 9102)
