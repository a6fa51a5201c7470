"""AWS's rules that moto does not keep, layered over moto on one boto3 session.

moto records calls and answers almost anything at once: a Lambda function is `Active` the moment
it is created, an ECS deployment stays `IN_PROGRESS` for ever, capacity provider strategies and
ECR repository policies are accepted and ignored. The drivers have to survive AWS's documented
behaviour instead, so this layer (botocore `before-call` / `after-call` handlers on the
session the drivers use, the moto server underneath unchanged) makes it so:

- Lambda: a created function is `Pending`, an updated one `InProgress`, a published version
  `Pending`, each for `reads` reads of it; changing a function meanwhile raises
  ResourceConflictException, as AWS does. Every change gives the function (and an alias) a new
  RevisionId, and a call passing a stale RevisionId raises PreconditionFailedException. A
  function can be made `Failed` (its creation failed, e.g. the image could not be pulled).
  CreateFunction and UpdateFunctionCode refuse an image whose ECR repository policy does not let
  lambda.amazonaws.com pull it. Provisioned concurrency (which moto lacks) is kept per alias,
  IN_PROGRESS for `reads` reads, then READY.
- ECS: each CreateService/UpdateService starts a deployment whose `rolloutState` walks from
  `IN_PROGRESS` to `COMPLETED` over `reads` DescribeServices, or to `FAILED` (the circuit
  breaker: the service goes back to its previous task definition, a stopped task says why), or
  never leaves `IN_PROGRESS` when no capacity can place it: a task asking for a GPU with launch
  type EC2, which capacity providers never scale for. A capacity provider strategy must name
  providers of the cluster, never together with a launch type.
- ELBv2: load balancer attributes include `idle_timeout.timeout_seconds` (60 unless set), as AWS
  returns them.

What only a real account proves (an image really pulled, tasks really placed, the real timing) is
said in the tests that use this.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

_ECR_IMAGE = re.compile(r"^[^/]+/(?P<repository>[^@:]+)[@:]")
LAMBDA_PULL_ACTIONS = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
NO_PLACEMENT = ("service {service} was unable to place a task because no container instance met all of "
                "its requirements. Reason: No Container Instances were found in your cluster.")


_INSTALLED: Dict[int, "StrictAws"] = {}
_PARAMS = "strict_aws.params"


def _with_params(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` called with the API call's parameters as `params`."""
    def call(**kwargs: Any) -> Any:
        kwargs["params"] = (kwargs.get("context") or {}).get(_PARAMS, {})
        return handler(**kwargs)

    return call


class _Response:
    """What botocore takes from a `before-call` handler as the HTTP response."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: Dict[str, str] = {}
        self.content = b""


def _error(code: str, message: str, status: int = 400) -> Tuple[_Response, Dict[str, Any]]:
    return _Response(status), {"Error": {"Code": code, "Message": message},
                               "ResponseMetadata": {"HTTPStatusCode": status}}


def _stale_revision(params: Dict[str, Any], current: Optional[str]) -> Any:
    """AWS's answer to a call whose RevisionId is not the resource's current one (None: it is)."""
    wanted = params.get("RevisionId")
    if wanted is None or wanted == current:
        return None
    return _error("PreconditionFailedException", "The Revision Id provided does not match the latest Revision "
                  "Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id", 412)


def _ok(body: Dict[str, Any]) -> Tuple[_Response, Dict[str, Any]]:
    return _Response(200), {**body, "ResponseMetadata": {"HTTPStatusCode": 200}}


@dataclass
class _Countdown:
    """A state reported for `reads` more reads, then `then`."""

    state: str
    reads: int
    then: str

    def read(self) -> str:
        if self.reads <= 0:
            return self.then
        self.reads -= 1
        return self.state


@dataclass
class Rollout:
    """One ECS deployment as the fake walks it."""

    id: str
    task_definition: str
    previous: Optional[str]
    outcome: str  # COMPLETED, FAILED or STUCK
    reads: int
    stopped_reason: str = ""
    state: str = "IN_PROGRESS"
    rolled_back: bool = False

    def read(self) -> str:
        if self.state == "IN_PROGRESS" and self.outcome != "STUCK":
            self.reads -= 1
            if self.reads <= 0:
                self.state = self.outcome
        return self.state


@dataclass
class StrictAws:
    session: Any
    reads: int = 2  # how many reads a transitional state lasts
    # What the next rollout of a service does: COMPLETED (default), FAILED or STUCK.
    ecs_outcomes: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    calls: List[str] = field(default_factory=list)  # every call, "service.Operation"
    _function_state: Dict[str, _Countdown] = field(default_factory=dict)
    _update_state: Dict[str, _Countdown] = field(default_factory=dict)
    _version_state: Dict[Tuple[str, str], _Countdown] = field(default_factory=dict)
    _failed: Dict[str, str] = field(default_factory=dict)
    _fail_create: Dict[str, str] = field(default_factory=dict)
    _revisions: Dict[str, str] = field(default_factory=dict)
    _rollouts: Dict[str, Rollout] = field(default_factory=dict)
    _provisioned_configs: Dict[str, Tuple[int, _Countdown]] = field(default_factory=dict)
    _strategies: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    _handlers: List[Tuple[str, Callable[..., Any]]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    # -- set-up ---------------------------------------------------------------------------------

    @classmethod
    def on(cls, session: Any) -> "StrictAws":
        """The rules installed on `session`."""
        return _INSTALLED[id(session)]

    def install(self) -> "StrictAws":
        """Register the rules on the session (clients made after this carry them)."""
        assert id(self.session) not in _INSTALLED, "the rules are installed on this session already"
        _INSTALLED[id(self.session)] = self
        for event, handler in (
            ("before-parameter-build", self._keep_params),
            ("before-call", self._record),
            ("before-call.lambda.CreateFunction", self._lambda_image_pullable),
            ("before-call.lambda.UpdateFunctionCode", self._lambda_changes),
            ("before-call.lambda.UpdateFunctionConfiguration", self._lambda_changes),
            ("before-call.lambda.PublishVersion", self._lambda_changes),
            ("before-call.lambda.UpdateAlias", self._alias_revision),
            ("after-call.lambda.CreateFunction", self._lambda_created),
            ("after-call.lambda.UpdateFunctionCode", self._lambda_updated),
            ("after-call.lambda.UpdateFunctionConfiguration", self._lambda_updated),
            ("after-call.lambda.PublishVersion", self._lambda_published),
            ("after-call.lambda.GetFunction", self._lambda_read),
            ("after-call.lambda.GetFunctionConfiguration", self._lambda_read),
            ("after-call.lambda.DeleteFunction", self._lambda_deleted),
            ("after-call.lambda.CreateAlias", self._alias_changed),
            ("after-call.lambda.UpdateAlias", self._alias_changed),
            ("after-call.lambda.GetAlias", self._alias_read),
            ("before-call.lambda.PutProvisionedConcurrencyConfig", self._provision),
            ("before-call.lambda.GetProvisionedConcurrencyConfig", self._provisioned),
            ("before-call.lambda.DeleteProvisionedConcurrencyConfig", self._unprovision),
            ("before-call.ecs.CreateService", self._ecs_capacity),
            ("before-call.ecs.UpdateService", self._ecs_capacity),
            ("after-call.ecs.CreateService", self._ecs_rollout_started),
            ("after-call.ecs.UpdateService", self._ecs_rollout_started),
            ("after-call.ecs.DescribeServices", self._ecs_services_read),
            ("before-call.ecs.ListTasks", self._ecs_list_stopped),
            ("before-call.ecs.DescribeTasks", self._ecs_describe_stopped),
            ("after-call.elastic-load-balancing-v2.DescribeLoadBalancerAttributes", self._elb_attributes),
        ):
            if event != "before-parameter-build":
                handler = _with_params(handler)
            self.session.events.register(event, handler)
            self._handlers.append((event, handler))
        return self

    def uninstall(self) -> None:
        _INSTALLED.pop(id(self.session), None)
        for event, handler in self._handlers:
            self.session.events.unregister(event, handler)
        self._handlers.clear()

    def raw(self, service: str) -> Any:
        """A client of the same moto without these rules (for looking and for the rules' own
        changes)."""
        import boto3

        credentials = self.session.get_credentials()
        plain = boto3.session.Session(region_name=self.session.region_name, aws_access_key_id=credentials.access_key,
                                      aws_secret_access_key=credentials.secret_key, aws_session_token=credentials.token)
        return plain.client(service)

    # -- what a test sets -----------------------------------------------------------------------

    def fail_next_create(self, function: str, reason: str = "ImageAccessDenied") -> None:
        """The next creation of `function` fails (State Failed once Pending is over), as when
        Lambda cannot pull its image."""
        self._fail_create[function] = reason

    def next_rollout(self, service: str, outcome: str, stopped_reason: str = "") -> None:
        """What the next deployment of `service` does: COMPLETED, FAILED (with a stopped task
        saying `stopped_reason`) or STUCK."""
        assert outcome in ("COMPLETED", "FAILED", "STUCK"), outcome
        self.ecs_outcomes[service] = (outcome, stopped_reason)

    def rollout(self, service: str) -> Optional[Rollout]:
        return self._rollouts.get(service)

    # -- every call -----------------------------------------------------------------------------

    @staticmethod
    def _keep_params(params: Dict[str, Any], context: Dict[str, Any], **_: Any) -> None:
        # The call's own parameters: `before-call` only sees the serialized request.
        context[_PARAMS] = dict(params)

    def _record(self, event_name: str, **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        self.calls.append(f"{service}.{operation}")

    # -- Lambda ---------------------------------------------------------------------------------

    def _function(self, params: Dict[str, Any]) -> str:
        # A name, or an ARN (possibly with a qualifier): the function's name either way.
        name = params.get("FunctionName", "")
        return name.split(":")[6] if name.startswith("arn:") else name

    def _new_revision(self, key: str) -> str:
        self._revisions[key] = str(uuid.uuid4())
        return self._revisions[key]

    def _lambda_image_pullable(self, params: Dict[str, Any], **_: Any) -> Any:
        image = (params.get("Code") or {}).get("ImageUri") or params.get("ImageUri")
        if not image:
            return None
        match = _ECR_IMAGE.match(image)
        repository = match.group("repository") if match else ""
        ecr = self.raw("ecr")
        try:
            policy = json.loads(ecr.get_repository_policy(repositoryName=repository)["policyText"])
        except Exception:  # no repository, or no policy: Lambda cannot pull either way
            policy = {"Statement": []}
        for statement in policy.get("Statement", []):
            principal = statement.get("Principal") or {}
            services = principal.get("Service") if isinstance(principal, dict) else None
            services = [services] if isinstance(services, str) else services or []
            actions = statement.get("Action")
            actions = [actions] if isinstance(actions, str) else actions or []
            if (statement.get("Effect") == "Allow" and "lambda.amazonaws.com" in services
                    and all(a in actions or "ecr:*" in actions for a in LAMBDA_PULL_ACTIONS)):
                return None
        return _error("InvalidParameterValueException",
                      "Lambda does not have permission to access the ECR image. Check the ECR permissions.")

    def _lambda_changes(self, params: Dict[str, Any], event_name: str, **kwargs: Any) -> Any:
        function = self._function(params)
        if function in self._failed:
            return _error("ResourceConflictException",
                          f"The operation cannot be performed at this time. The function {function} is in "
                          f"state Failed ({self._failed[function]}).", 409)
        pending = self._function_state.get(function)
        if pending and pending.reads > 0:
            return _error("ResourceConflictException",
                          "The operation cannot be performed at this time. The function is currently in the "
                          "following state: Pending", 409)
        update = self._update_state.get(function)
        if update and update.reads > 0:
            return _error("ResourceConflictException",
                          f"The operation cannot be performed at this time. An update is in progress for "
                          f"resource: {function}", 409)
        stale = _stale_revision(params, self._revisions.get(function))
        if stale:
            return stale
        if event_name.endswith("UpdateFunctionCode"):
            return self._lambda_image_pullable(params)
        return None

    def _lambda_created(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" in parsed:
            return
        function = self._function(params)
        self._failed.pop(function, None)
        self._function_state[function] = _Countdown("Pending", self.reads, "Active")
        if function in self._fail_create:
            self._failed[function] = self._fail_create.pop(function)
        parsed["State"], parsed["RevisionId"] = "Pending", self._new_revision(function)

    def _lambda_updated(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" in parsed:
            return
        function = self._function(params)
        self._update_state[function] = _Countdown("InProgress", self.reads, "Successful")
        parsed["LastUpdateStatus"], parsed["RevisionId"] = "InProgress", self._new_revision(function)

    def _lambda_published(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" in parsed:
            return
        function = self._function(params)
        self._version_state[(function, parsed["Version"])] = _Countdown("Pending", self.reads, "Active")
        parsed["State"] = "Pending"
        self._new_revision(function)  # publishing changes the function's revision too

    def _lambda_read(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" in parsed:
            return
        function = self._function(params)
        configuration = parsed.get("Configuration", parsed)
        qualifier = params.get("Qualifier")
        if qualifier and qualifier.isdigit():
            countdown = self._version_state.get((function, qualifier))
            configuration["State"] = countdown.read() if countdown else "Active"
            return
        if function in self._function_state:
            configuration["State"] = self._function_state[function].read()
        if function in self._failed and configuration.get("State") != "Pending":
            configuration.update(State="Failed", StateReasonCode=self._failed[function],
                                 StateReason=f"Lambda could not create the function: {self._failed[function]}")
        if function in self._update_state:
            configuration["LastUpdateStatus"] = self._update_state[function].read()
        configuration["RevisionId"] = self._revisions.setdefault(function, str(uuid.uuid4()))

    def _lambda_deleted(self, params: Dict[str, Any], **_: Any) -> None:
        function = self._function(params)
        for states in (self._function_state, self._update_state, self._failed, self._revisions):
            states.pop(function, None)

    def _alias_key(self, params: Dict[str, Any]) -> str:
        return f"{self._function(params)}:{params.get('Name')}"

    def _alias_revision(self, params: Dict[str, Any], **_: Any) -> Any:
        return _stale_revision(params, self._revisions.get(self._alias_key(params)))

    def _alias_changed(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" not in parsed:
            parsed["RevisionId"] = self._new_revision(self._alias_key(params))

    def _alias_read(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" not in parsed:
            parsed["RevisionId"] = self._revisions.setdefault(self._alias_key(params), str(uuid.uuid4()))

    # Provisioned concurrency (moto has none): IN_PROGRESS for `reads` reads, then READY.
    def _provision(self, params: Dict[str, Any], **_: Any) -> Any:
        key = self._alias_key({**params, "Name": params.get("Qualifier")})
        count = int(params["ProvisionedConcurrentExecutions"])
        self._provisioned_configs[key] = (count, _Countdown("IN_PROGRESS", self.reads, "READY"))
        return _ok({"RequestedProvisionedConcurrentExecutions": count, "Status": "IN_PROGRESS"})

    def _provisioned(self, params: Dict[str, Any], **_: Any) -> Any:
        key = self._alias_key({**params, "Name": params.get("Qualifier")})
        if key not in self._provisioned_configs:
            return _error("ProvisionedConcurrencyConfigNotFoundException",
                          "No Provisioned Concurrency Config found for this function", 404)
        count, status = self._provisioned_configs[key]
        state = status.read()
        return _ok({"RequestedProvisionedConcurrentExecutions": count, "Status": state,
                    "AvailableProvisionedConcurrentExecutions": count if state == "READY" else 0,
                    "AllocatedProvisionedConcurrentExecutions": count if state == "READY" else 0})

    def _unprovision(self, params: Dict[str, Any], **_: Any) -> Any:
        self._provisioned_configs.pop(self._alias_key({**params, "Name": params.get("Qualifier")}), None)
        return _Response(204), {"ResponseMetadata": {"HTTPStatusCode": 204}}

    # -- ECS ------------------------------------------------------------------------------------

    def _ecs_capacity(self, params: Dict[str, Any], **_: Any) -> Any:
        strategy = params.get("capacityProviderStrategy")
        if not strategy:
            return None
        if params.get("launchType"):
            return _error("InvalidParameterException",
                          "Specifying both a launch type and capacity provider strategy is not supported.")
        clusters = self.raw("ecs").describe_clusters(clusters=[params.get("cluster", "default")])["clusters"]
        attached = set(clusters[0].get("capacityProviders") or []) if clusters else set()
        for item in strategy:
            if item["capacityProvider"] not in attached:
                return _error("InvalidParameterException",
                              f"The specified capacity provider strategy cannot contain a capacity provider "
                              f"that is not associated with the cluster ({item['capacityProvider']}).")
        return None

    def _ecs_rollout_started(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" in parsed:
            return
        service = parsed.get("service") or {}
        name = service.get("serviceName", "")
        previous = self._rollouts.get(name)
        if params.get("taskDefinition") is None and previous:
            return  # an update that starts no new deployment
        # What serves until this deployment completes: the last one's revision, or, if that one
        # failed, the revision the circuit breaker went back to.
        serving = None if previous is None else (
            previous.previous if previous.state == "FAILED" else previous.task_definition)
        outcome, reason = self.ecs_outcomes.pop(name, ("COMPLETED", ""))
        wants_gpu = self._task_wants_gpu(service.get("taskDefinition", ""))
        if wants_gpu and params.get("launchType") == "EC2":
            outcome = "STUCK"  # capacity providers do not scale for launch-type tasks
        rollout = self._rollouts[name] = Rollout(
            f"ecs-svc/{next(self._ids)}", service.get("taskDefinition", ""), serving, outcome, self.reads, reason)
        if params.get("capacityProviderStrategy"):
            self._strategies[name] = params["capacityProviderStrategy"]
        elif params.get("launchType"):
            self._strategies.pop(name, None)
        service["deployments"] = [{"id": rollout.id, "status": "PRIMARY", "taskDefinition": rollout.task_definition,
                                   "desiredCount": 1, "runningCount": 0, "rolloutState": "IN_PROGRESS"}]
        self._overlay_placement(service)

    def _overlay_placement(self, service: Dict[str, Any]) -> None:
        # moto keeps no capacity provider strategy (it reports launch type EC2); ECS does.
        strategy = self._strategies.get(service.get("serviceName", ""))
        if strategy:
            service["capacityProviderStrategy"] = strategy
            service.pop("launchType", None)

    def _task_wants_gpu(self, arn: str) -> bool:
        try:
            definition = self.raw("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]
        except Exception:
            return False
        return any(r.get("type") == "GPU" for c in definition.get("containerDefinitions", [])
                   for r in c.get("resourceRequirements") or [])

    def _ecs_services_read(self, params: Dict[str, Any], parsed: Dict[str, Any], **_: Any) -> None:
        for service in parsed.get("services", []):
            self._overlay_placement(service)
            rollout = self._rollouts.get(service.get("serviceName", ""))
            if rollout is None:
                continue
            state = rollout.read()
            primary = {"id": rollout.id, "status": "PRIMARY", "taskDefinition": rollout.task_definition,
                       "desiredCount": 1, "runningCount": 1 if state == "COMPLETED" else 0,
                       "failedTasks": 3 if state == "FAILED" else 0, "rolloutState": state,
                       "rolloutStateReason": f"ECS deployment {rollout.id} {state.lower().replace('_', ' ')}."}
            events: List[Dict[str, Any]] = []
            if state == "FAILED" and rollout.previous and not rollout.rolled_back:
                # The circuit breaker rolls the service back to the previous revision.
                rollout.rolled_back = True
                self.raw("ecs").update_service(cluster=service["clusterArn"], service=service["serviceName"],
                                               taskDefinition=rollout.previous)
            if state == "FAILED":
                # The circuit breaker rolled back: a new primary on the previous revision.
                primary.update(status="ACTIVE", rolloutStateReason="ECS deployment circuit breaker: tasks "
                                                                   "failed to start.")
                back = {"id": f"{rollout.id}-rollback", "status": "PRIMARY", "taskDefinition": rollout.previous,
                        "desiredCount": 1, "runningCount": 1, "failedTasks": 0, "rolloutState": "COMPLETED"}
                service["deployments"] = [back, primary] if rollout.previous else [primary]
                service["taskDefinition"] = rollout.previous or rollout.task_definition
                events.append({"id": "e2", "message": f"(service {service['serviceName']}) rolling back to "
                                                      f"deployment {rollout.id}-rollback."})
                events.append({"id": "e1", "message": f"(service {service['serviceName']}) deployment "
                                                      f"{rollout.id} deployment failed: tasks failed to start."})
            else:
                service["deployments"] = [primary]
            if rollout.outcome == "STUCK":
                events.append({"id": "e0", "message": NO_PLACEMENT.format(service=f"(service {service['serviceName']})")})
            service["events"] = events

    def _ecs_list_stopped(self, params: Dict[str, Any], **_: Any) -> Any:
        if params.get("desiredStatus") != "STOPPED":
            return None
        name = params.get("serviceName", "")
        rollout = self._rollouts.get(name)
        if rollout is None or rollout.state != "FAILED":
            return _ok({"taskArns": []})
        return _ok({"taskArns": [f"arn:aws:ecs:task/{name}/stopped-1"]})

    def _ecs_describe_stopped(self, params: Dict[str, Any], **_: Any) -> Any:
        tasks = []
        for arn in params.get("tasks", []):
            name = arn.split("/")[-2] if "/stopped-" in arn else ""
            rollout = self._rollouts.get(name)
            if rollout is not None:
                tasks.append({"taskArn": arn, "taskDefinitionArn": rollout.task_definition, "lastStatus": "STOPPED",
                              "stopCode": "TaskFailedToStart", "stoppedReason": rollout.stopped_reason,
                              "startedBy": rollout.id})
        return _ok({"tasks": tasks, "failures": []}) if tasks else None

    # -- ELBv2 ----------------------------------------------------------------------------------

    def _elb_attributes(self, parsed: Dict[str, Any], **_: Any) -> None:
        attributes = parsed.get("Attributes")
        if attributes is not None and not any(a["Key"] == "idle_timeout.timeout_seconds" for a in attributes):
            attributes.append({"Key": "idle_timeout.timeout_seconds", "Value": "60"})
