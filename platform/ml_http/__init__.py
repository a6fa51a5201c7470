"""The HTTP/1.1 layer shared by the model server (`ml_serving`) and the local gateway
(`ml_gateway`), on asyncio and httptools:

- `messages`: status lines, heads and request ids, written one way for both;
- `server`: a buffered server protocol (whole requests to a handler; keep-alive, pipelining,
  limits and timeouts), what the model server answers with;
- `stream`: messages as a stream of events pulled one at a time (head, body chunks, end), what
  the gateway relays both ways;
- `ready`: the ready file a server writes once it listens.
"""
