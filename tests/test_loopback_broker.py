"""The loopback Service Bus broker, driven by the real azure-servicebus SDK over the real wire."""

from __future__ import annotations

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

from eventbroker.testing.servicebus_broker import LoopbackServiceBus


def _bodies(messages: list[object]) -> list[str]:
    return [str(m) for m in messages]


def test_topic_fans_out_to_every_subscription(servicebus_broker: LoopbackServiceBus) -> None:
    broker = servicebus_broker
    broker.create_topic("events")
    for name in ("a", "b", "c"):
        broker.create_subscription("events", name)
    with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        with client.get_topic_sender("events") as sender:
            sender.send_messages(ServiceBusMessage("one", message_id="m1"))
            sender.send_messages([ServiceBusMessage("two"), ServiceBusMessage("three")])
        for name in ("a", "b", "c"):
            with client.get_subscription_receiver(
                "events", name, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
            ) as receiver:
                received = receiver.receive_messages(max_message_count=10, max_wait_time=2)
                assert _bodies(received) == ["one", "two", "three"]
                assert received[0].message_id == "m1"
                assert [m.sequence_number for m in received] == [1, 2, 3]
    assert broker.message_count("events/Subscriptions/a") == 0
