"""The RabbitMQ protocol binding of CloudEvents, checked with the CloudEvents Python SDK
(cloudevents.core.bindings.rabbitmq) through pika, for tests/api/cloudevents_wire.rs.

  amqp_cloudevent.py read URL QUEUE
      Takes one message from QUEUE, reads it with the SDK's from_binary and prints the
      CloudEvent's attributes and data as JSON. Exits 1 when the queue is empty or the SDK
      refuses the message.
  amqp_cloudevent.py publish URL EXCHANGE ROUTING_KEY ATTRIBUTES_JSON DATA_JSON
      Makes a CloudEvent from the attributes and data, turns it into a RabbitMQ message with
      the SDK's to_binary and publishes it with pika (publisher confirms on).
"""

import json
import sys

import pika
from dateutil.parser import isoparse
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def read(url, queue):
    conn = connect(url)
    try:
        ch = conn.channel()
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            print(f"no message in {queue}", file=sys.stderr)
            return 1
        # pika hands header strings back as str (bytes when they are not UTF-8).
        headers = {
            k: (v.decode() if isinstance(v, bytes) else v)
            for k, v in (props.headers or {}).items()
        }
        message = rabbitmq.RabbitMQMessage(
            headers=headers, content_type=props.content_type, body=body
        )
        event = rabbitmq.from_binary(message, JSONFormat(), CloudEvent)
        attributes = {
            k: (v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in event.get_attributes().items()
        }
        print(json.dumps({"attributes": attributes, "data": event.get_data(),
                          "warren_headers": sorted(k for k in headers if not k.startswith("ce-"))}))
        return 0
    finally:
        conn.close()


def publish(url, exchange, routing_key, attributes, data):
    attributes = json.loads(attributes)
    if "time" in attributes:
        attributes["time"] = isoparse(attributes["time"])
    event = CloudEvent(attributes=attributes, data=json.loads(data))
    message = rabbitmq.to_binary(event, JSONFormat())
    conn = connect(url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            exchange=exchange,
            routing_key=routing_key,
            body=message.body,
            properties=pika.BasicProperties(
                headers=message.headers, content_type=message.content_type, delivery_mode=2
            ),
            mandatory=True,
        )
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "read":
        sys.exit(read(*args))
    if command == "publish":
        sys.exit(publish(*args))
    print(f"unknown command {command}", file=sys.stderr)
    sys.exit(2)
