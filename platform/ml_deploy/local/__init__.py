"""`local` compute: model versions run on this machine behind one gateway that routes by host
name, `http://<model>.ml.<domain>:<gateway_port>/v<version>/...`.

Each deployed model version is one backend (`backends`): the model's container run through a
Docker-API engine (`engine: docker`, or `auto` when one answers), or the packaged server run as
a process (`engine: process`, or `auto` when no engine answers), on a free port of 127.0.0.1.
The gateway (`ml_gateway`, its own PEX) is a detached process started by the first deploy.

- `state`: the state directory (deployments, history, the route table the gateway reads);
- `processes`: detached processes, marked so that strays are found;
- `gateway`: the gateway's lifecycle and admin API as the deploy tools see it;
- `backends`: the one interface, its process and container implementations;
- `rollout`: a deploy (or rollback) as a plan of steps: the driver interface;
- `manage`: status and stop.
"""

from ml_deploy.local.manage import deployments, status, stop
from ml_deploy.local.rollout import plan, plan_rollback

__all__ = ["deployments", "plan", "plan_rollback", "status", "stop"]
