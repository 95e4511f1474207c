"""`ServiceBusOptions`: every setting of the Service Bus transport, also from the environment."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import attrs

from cache._settings import EnvSettings, Validator, env, hidden_repr, integer, number, refuse

from ._connection_string import ConnectionStringInfo, parse_connection_string
from ._errors import ServiceBusConfigurationError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

ENV_PREFIX = "EVENTBROKER_SERVICEBUS_"
MIN_AUTO_DELETE_ON_IDLE = 300.0
_TOPIC = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?$")
_ERROR = ServiceBusConfigurationError


def _env(name: str, *, secret: bool = False) -> dict[str, Any]:
    return env(ENV_PREFIX + name, secret=secret)


_positive = number(above=0, error=_ERROR)
_not_negative = number(minimum=0, error=_ERROR)


def _at_least(minimum: int) -> Validator:
    return integer(minimum=minimum, error=_ERROR)


_check_auto_delete = number(
    minimum=MIN_AUTO_DELETE_ON_IDLE,
    what="a finite number of seconds",
    note=f"Service Bus needs at least {MIN_AUTO_DELETE_ON_IDLE:.0f} seconds, 5 minutes",
    error=_ERROR,
)


def _check_topic(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _TOPIC.match(value):
        refuse(
            _ERROR,
            instance,
            attribute,
            value,
            "a Service Bus topic name: 1 to 260 characters of letters, digits, '.', '-', '_' "
            "and '/', starting and ending with a letter or digit",
        )


def _check_endpoint(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        refuse(
            _ERROR,
            instance,
            attribute,
            value,
            "an http:// or https:// URL such as 'http://127.0.0.1:5300'",
        )


def _check_connection_string(
    instance: object, attribute: attrs.Attribute[Any], value: str | None
) -> None:
    if value is not None:
        parse_connection_string(value)


@attrs.frozen(kw_only=True)
class ServiceBusOptions(EnvSettings):
    """Settings of `ServiceBusTransport`. Durations are in seconds.

    Give either ``connection_string`` or ``fully_qualified_namespace`` (authenticated with
    ``credential``, by default ``azure.identity.aio.DefaultAzureCredential``). Every setting
    but ``credential`` can come from an ``EVENTBROKER_SERVICEBUS_*`` environment variable: see
    `from_env` (keyword arguments win).
    """

    settings_error: ClassVar[type[ValueError]] = ServiceBusConfigurationError

    connection_string: str | None = attrs.field(
        default=None,
        repr=hidden_repr,
        validator=_check_connection_string,
        metadata=_env("CONNECTION_STRING", secret=True),
    )
    """``Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`` (never logged)."""
    fully_qualified_namespace: str | None = attrs.field(
        default=None, metadata=_env("FULLY_QUALIFIED_NAMESPACE")
    )
    """``<namespace>.servicebus.windows.net``, used with ``credential``."""
    credential: AsyncTokenCredential | None = attrs.field(default=None, eq=False, repr=False)
    """An async azure-identity credential; default ``DefaultAzureCredential`` (closed at stop)."""
    topic: str = attrs.field(default="eventbroker", validator=_check_topic, metadata=_env("TOPIC"))
    """The topic every instance of the application publishes to."""
    subscription_name: str | None = attrs.field(default=None, metadata=_env("SUBSCRIPTION_NAME"))
    """This instance's subscription; default ``<host>-<application>-<8 hex>``."""
    auto_delete_on_idle: float = attrs.field(
        default=1800.0, validator=_check_auto_delete, metadata=_env("AUTO_DELETE_ON_IDLE")
    )
    """Service Bus deletes the subscription after this long idle (a crashed instance's)."""
    message_time_to_live: float | None = attrs.field(
        default=None, validator=_positive, metadata=_env("MESSAGE_TIME_TO_LIVE")
    )
    """Time-to-live of each sent message; ``None`` keeps the topic's default."""
    create_missing_topic: bool = attrs.field(default=True, metadata=_env("CREATE_MISSING_TOPIC"))
    """Create the topic at start when it does not exist (otherwise start fails)."""
    filter_own_messages: bool = attrs.field(default=True, metadata=_env("FILTER_OWN_MESSAGES"))
    """Add a SQL rule on ``sys.Label`` dropping this instance's messages broker-side (fewer
    operations billed, less CPU, lower latency; own messages are dropped client-side anyway)."""
    delete_subscription_on_stop: bool = attrs.field(
        default=True, metadata=_env("DELETE_SUBSCRIPTION_ON_STOP")
    )
    """Delete the subscription at a clean stop."""
    administration_endpoint: str | None = attrs.field(
        default=None, validator=_check_endpoint, metadata=_env("ADMINISTRATION_ENDPOINT")
    )
    """Base URL of the administration (ATOM) API; default ``https://<namespace>``."""
    use_development_emulator: bool = attrs.field(
        default=False, metadata=_env("USE_DEVELOPMENT_EMULATOR")
    )
    """Plain AMQP without TLS, keeping the port (loopback hosts only), as the connection string flag."""
    prefetch_count: int = attrs.field(
        default=100, validator=_at_least(1), metadata=_env("PREFETCH_COUNT")
    )
    """Messages the receiver prefetches; also the most received per call."""
    receive_wait: float = attrs.field(
        default=5.0, validator=_positive, metadata=_env("RECEIVE_WAIT")
    )
    """Longest a receive call waits for a message (the SDK recovers in-call from 5 s up)."""
    subscription_check_interval: float = attrs.field(
        default=300.0, validator=_positive, metadata=_env("SUBSCRIPTION_CHECK_INTERVAL")
    )
    """How often a running transport checks its subscription still exists (recreating it if not)."""
    max_queued_messages: int = attrs.field(
        default=10_000, validator=_at_least(1), metadata=_env("MAX_QUEUED_MESSAGES")
    )
    """Bound of the outgoing queue; `publish` raises `PublishError` when it is full."""
    batch_window: float = attrs.field(
        default=0.0, validator=_not_negative, metadata=_env("BATCH_WINDOW")
    )
    """Extra wait to gather more messages into a batch (messages queued while a send is in
    flight are always coalesced)."""
    max_batch_messages: int = attrs.field(
        default=500, validator=_at_least(1), metadata=_env("MAX_BATCH_MESSAGES")
    )
    """Most messages per `ServiceBusMessageBatch` (1 sends one message per call)."""
    max_message_size: int = attrs.field(
        default=256 * 1024, validator=_at_least(1024), metadata=_env("MAX_MESSAGE_SIZE")
    )
    """Largest message body accepted by `publish` (Standard tier: 256 KB)."""
    publish_deadline: float = attrs.field(
        default=30.0, validator=_positive, metadata=_env("PUBLISH_DEADLINE")
    )
    """Once sends have failed this long, `publish` raises `PublishError` instead of queueing."""
    start_timeout: float = attrs.field(
        default=5.0, validator=_positive, metadata=_env("START_TIMEOUT")
    )
    """Longest `start()` waits for the first connection. Past it, or at once when the namespace
    is unreachable, start returns and the transport connects in the background."""
    stop_timeout: float = attrs.field(
        default=10.0, validator=_positive, metadata=_env("STOP_TIMEOUT")
    )
    """Longest `stop()` takes in all (sending what is queued, closing, deleting the
    subscription); what has not finished by then is abandoned and logged."""
    reconnect_initial_backoff: float = attrs.field(
        default=0.5, validator=_positive, metadata=_env("RECONNECT_INITIAL_BACKOFF")
    )
    """First delay before reconnecting; doubles per failure, with jitter."""
    reconnect_max_backoff: float = attrs.field(
        default=30.0, validator=_positive, metadata=_env("RECONNECT_MAX_BACKOFF")
    )
    """Longest delay between reconnect attempts."""
    sdk_retry_total: int = attrs.field(
        default=3, validator=_at_least(0), metadata=_env("SDK_RETRY_TOTAL")
    )
    """Retries the SDK makes inside one operation before the transport's own reconnect."""

    def __attrs_post_init__(self) -> None:
        if (self.connection_string is None) == (self.fully_qualified_namespace is None):
            raise ServiceBusConfigurationError(
                "ServiceBusOptions needs exactly one of connection_string "
                f"({ENV_PREFIX}CONNECTION_STRING) or fully_qualified_namespace "
                f"({ENV_PREFIX}FULLY_QUALIFIED_NAMESPACE, authenticated with credential)"
            )
        if self.credential is not None and self.connection_string is not None:
            raise ServiceBusConfigurationError(
                "ServiceBusOptions.credential is used with fully_qualified_namespace, not with "
                "connection_string (which carries its own key)"
            )
        if self.reconnect_max_backoff < self.reconnect_initial_backoff:
            raise ServiceBusConfigurationError(
                "ServiceBusOptions.reconnect_max_backoff must be at least reconnect_initial_backoff"
            )

    @property
    def connection_info(self) -> ConnectionStringInfo | None:
        """The non-secret parts of ``connection_string``, if one is set."""
        if self.connection_string is None:
            return None
        return parse_connection_string(self.connection_string)
