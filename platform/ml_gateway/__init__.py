"""The local gateway: one port for every model deployed on this machine, routed by host name.

    gateway.pex --routes <state dir>/routes.json --port 8480

`http://<model>.ml.<domain>:<port>/...` reaches a backend of <model> (a model server started by
`ml_deploy.local`), by path (`routes`):

- `/v<N>/...` and Open Inference Protocol `/v2/models/<m>/versions/<N>/...`: version N;
- anything else (`/v2/health/*`, `/v2/models/<m>`, `/openapi.json`, `/metrics`): the highest
  live version.

An unknown host or version answers a JSON 404 listing what is routed. `GET /-/routes` (any host)
shows the route table with its generation number and the requests in flight per backend: the
deploy tool reads it to know when a new table is live and when an old backend has nothing left
in flight.

The route table (`ml_contract.route_table`) is a file the deploy tool writes atomically, by
rename; it is re-read on SIGHUP and whenever the file changes, and a table that fails to load
leaves the previous one in place (and its error in `/-/routes`). How requests are relayed and
when they are retried: `proxy`.

The gateway is its own PEX (`//platform:gateway`), in no model's image: a change to it changes
no model's digest, and every environment runs the build `pants deploy` hands it.
"""
