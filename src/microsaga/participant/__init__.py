"""The other side of a saga: a Python service's handlers, served safely to microsaga.

::

    from microsaga import Message, StepError
    from microsaga.participant import Participant, SQLiteDedupeStore

    inventory = Participant(dedupe=SQLiteDedupeStore("inventory-dedupe.db"))

    @inventory.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> dict:
        order = msg.json()
        if not in_stock(order):
            raise StepError("out of stock", code="out_of_stock", retryable=False)
        return {"reservation": f"R-{order['order_id']}"}

    # over HTTP: the participant is an ASGI app (``uvicorn shop.inventory:inventory``)
    # over a broker: ``await inventory.subscribe("nats://127.0.0.1:4222", "stock.reserve")``

A handler (sync or async; a sync one runs in a worker thread) takes a
:class:`~microsaga.Message` and returns a Message, a JSON-able value or None (an empty
body). Or it takes typed parameters, as a typed saga step does (docs/python.md): a
``msgspec.Struct``, dataclass, ``TypedDict`` or pydantic model gets the body decoded
into it, a ``Message`` parameter the request; a body that does not fit is a 422
``invalid_input`` naming the field, and the handler does not run. A handler that
cannot be called so (no parameter, two messages, a ``StepContext``: the step's context
stays with the step) is a ``ConfigurationError`` when it is registered.

HTTP: ``POST {prefix}/Name/Method`` runs the handler registered as ``"Name.Method"``.
The body must be JSON (or empty); the request headers, but HTTP's own, are the
message's header. Answers, which :class:`~microsaga.transports.http.HttpClient` maps
back to retry decisions:

======  ======================  ====================================================
status  error code              when
======  ======================  ====================================================
200                             the handler returned; the body is its JSON (empty
                                for None)
400     ``invalid_json``        the request body is not JSON
404     ``unknown_endpoint``    no handler for that path
405     ``method_not_allowed``  not a POST
413     ``body_too_large``      the body is over ``max_body`` bytes
503     ``in_progress``         another process sharing the dedupe store is
                                answering the same key (``Retry-After: 1``)
422     the error's code        the handler raised a non-retryable error, e.g.
                                ``StepError(..., retryable=False)``: the step fails
503     the error's code        the handler raised a retryable microsaga error (a
                                ``StepError``, a ``TransportError``): the step is
                                retried; ``Retry-After`` when it has ``retry_after``
500     ``internal``            the handler raised anything else: the step is retried
======  ======================  ====================================================

Error bodies are ``{"error": {"code", "message", "retryable"}}``.

Deduplication: a request with an ``Idempotency-Key`` (microsaga sends
``<execution>:<step>`` on every attempt) runs its handler at most once per key and
handler name: a repeated key gets the first answer back, marked
``Idempotent-Replayed: true``, without running the handler. Only final answers (200
and 422) are kept; after a 5xx the next attempt runs the handler again. Concurrent
requests with the same key wait for the first one. Answers are kept in a
:class:`DedupeStore`: :class:`MemoryDedupeStore` (default, this process only) or
:class:`SQLiteDedupeStore` (survives restarts, shared by processes on one host);
both forget keys after ``ttl`` seconds (a day by default). With a store shared by
processes, a key being answered by one process is answered 503 ``in_progress``
(``Retry-After: 1``) by the others, until the first answer is kept (a claim of a
process of this machine that died is taken at once; one of another PID namespace
expires, ``claim_ttl``).

Brokers: :meth:`Participant.subscribe` consumes a topic with the same handlers and the
same deduplication. When the message asks for a reply (``PublishStep(reply=True)``),
the handler's result is the reply; a failure is replied as an error (see
:func:`microsaga.transports.error_reply`), which fails or retries the step. A plain
message whose handler fails with a retryable error is left to the broker to deliver
again.

The package: :mod:`~microsaga.participant.service` (:class:`Participant`: handlers,
once per key), :mod:`~microsaga.participant.asgi` (HTTP),
:mod:`~microsaga.participant.subscriber` (brokers),
:mod:`~microsaga.participant.dedupe` (:class:`Reply` and the stores).
"""

from .dedupe import DedupeStore, MemoryDedupeStore, Reply, SQLiteDedupeStore
from .service import Participant

__all__ = [
    "DedupeStore",
    "MemoryDedupeStore",
    "Participant",
    "Reply",
    "SQLiteDedupeStore",
]
