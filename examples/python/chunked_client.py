"""A chunked call from Python (paho-mqtt 2.x), written from PROTOCOL.md's
"Chunked transfer" alone: `Files.sum(data)` with 600 000 bytes of arguments,
more than the broker's 256 KiB Maximum Packet Size, sent in chunks within
the server's grants. Usage: python3 chunked_client.py <port>.
The test `python_paho_sends_a_chunked_call` runs it in CI."""

import json
import queue
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPLY = "replies/py-chunks"
grants = queue.Queue()      # (granted, instance) from the server's grants
answers = queue.Queue()     # the call's answer
subscribed = threading.Event()


def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()


def send_chunked(client, base, method, payload, corr, reply_topic, grants, size=100_000):
    count = max(1, -(-len(payload) // size))
    def chunk(index, topic):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = corr
        props.ContentType = "application/json"
        props.UserProperty = [("mqrpc-chunk", f"{index}/{count}/{len(payload)}")]
        client.publish(topic, payload[index * size:(index + 1) * size], qos=1, properties=props)
    chunk(0, f"{base}/{method}")
    sent = 1
    while sent < count:
        granted, instance = grants.get(timeout=30)      # from on_message
        while sent < min(granted, count):
            chunk(sent, f"{base}/_to/{instance}/{method}")
            sent += 1
    return count


def on_message(client, userdata, msg):
    user = dict(getattr(msg.properties, "UserProperty", []))
    if "mqrpc-chunk-grant" in user:
        grants.put((int(user["mqrpc-chunk-grant"]), user["mqrpc-instance"]))
    else:
        answers.put((user.get("mqrpc-status", "ok"), msg.payload))


def main():
    port = int(sys.argv[1])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="chunks-py", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(REPLY, qos=1)
    assert subscribed.wait(10), "no SUBACK"
    data = [(i % 251) for i in range(600_000)]
    payload = json.dumps({"data": data}).encode()
    count = send_chunked(client, "mqrpc/Files", "sum", payload, b"py-1", REPLY, grants)
    print(f"chunks sent {count}")
    status, body = answers.get(timeout=60)
    assert status == "ok", (status, body)
    assert json.loads(body) == sum(data), body
    print(f"summed {len(data)} bytes: {sum(data)}")
    client.loop_stop()
    client.disconnect()


main()
