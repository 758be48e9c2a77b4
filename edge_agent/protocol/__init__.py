"""The device wire protocol (MQTT 3.1.1/5), version 1.

Topics under ``continuum/v1/devices/{device_id}/``:

========================  ===========  ======  =========================================
topic                     direction    QoS     payload
========================  ===========  ======  =========================================
``hello``                 device → CP  1, R    :class:`Hello` (retained capabilities)
``status``                device → CP  1, R    :class:`DeviceStatus`; the last will = offline
``telemetry``             device → CP  0       :class:`Telemetry`
``runs/{run_id}``         device → CP  1, R    :class:`RunUpdate` (every state change)
``commands``              CP → device  1       :class:`Command` (run / cancel / forget), signed
``rejected``              device → CP  1       :class:`CommandRejected` (a refused command)
========================  ===========  ======  =========================================

(R = retained.) Every payload is JSON with ``"v": 1``; receivers reject a payload that
is larger than :data:`MAX_PAYLOAD_BYTES`, not JSON, of another version or not of the
model, with a :class:`ProtocolError` whose message says which. Commands are signed by
the control plane and verified by the agent: see :mod:`edge_agent.protocol.signing`.
"""

from edge_agent.protocol.v1 import (
    DEVICE_PUBLISHES,
    DEVICE_SUBSCRIBES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    TOPIC_PREFIX,
    ArtifactGet,
    ArtifactPut,
    CancelCommand,
    Command,
    CommandRejected,
    DevicePower,
    DeviceStatus,
    ForgetCommand,
    Hello,
    OutputDigest,
    ProtocolError,
    RunCommand,
    RunSpec,
    RunUpdate,
    SignedCommand,
    Telemetry,
    decode,
    device_id_from_topic,
    encode,
    to_dict,
    topic,
)

__all__ = [
    "DEVICE_PUBLISHES", "DEVICE_SUBSCRIBES", "MAX_PAYLOAD_BYTES", "PROTOCOL_VERSION", "TOPIC_PREFIX",
    "ArtifactGet", "ArtifactPut",
    "CancelCommand", "Command", "CommandRejected", "DevicePower", "DeviceStatus", "ForgetCommand", "Hello",
    "OutputDigest", "ProtocolError", "RunCommand", "RunSpec", "RunUpdate", "SignedCommand",
    "Telemetry", "decode", "device_id_from_topic", "encode", "to_dict", "topic",
]
