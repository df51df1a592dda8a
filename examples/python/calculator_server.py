"""An mqrpc Calculator server written against PROTOCOL.md alone.

Usage: python3 calculator_server.py [port]   (broker on 127.0.0.1)
It prints "ready" once subscribed.
"""
import sys
import json
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe("mqrpc/Calculator/+", qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    print("ready", flush=True)


def on_message(client, userdata, msg):
    request = msg.properties
    if not getattr(request, "ResponseTopic", None):
        return                                   # one-way request: no answer
    method = msg.topic.rsplit("/", 1)[1]
    props = Properties(PacketTypes.PUBLISH)
    if hasattr(request, "CorrelationData"):
        props.CorrelationData = request.CorrelationData
    try:
        args = json.loads(msg.payload)
        if method == "add":
            status, body = "ok", json.dumps(args["a"] + args["b"])
        elif method == "divide":
            if args["b"] == 0:
                status, body = "error", json.dumps("DivideByZero")
            else:
                status, body = "ok", json.dumps(args["a"] / args["b"])
        else:
            status, body = "unknown-method", f"no method `{method}`"
    except (ValueError, KeyError) as e:
        status, body = "bad-request", f"cannot decode the arguments: {e}"
    props.ContentType = "application/json" if status in ("ok", "error") else "text/plain; charset=utf-8"
    props.UserProperty = [("mqrpc-status", status)]
    client.publish(request.ResponseTopic, body, qos=msg.qos, properties=props)


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="calculator-py", protocol=mqtt.MQTTv5)
client.on_connect = on_connect
client.on_message = on_message
client.on_subscribe = on_subscribe
client.connect("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 1883)
client.loop_forever()
