"""moto_server enforcing IAM the way AWS does for the DynamoDB and Kinesis calls floe makes, for
the IAM infra tests (infra-tests/aws/worker-iam.test.ts). Runs ./moto-server.py after the patches.

moto 5.2.1 enforces IAM policies (after INITIAL_NO_AUTH_ACTION_COUNT requests, or once
`POST /moto-api/reset-auth` sets that count) with the user's identity policies, but:

- For DynamoDB and Kinesis it checks the action against the resource "*": a statement naming a
  table or stream ARN never matches, so a least-privilege policy is denied everything. S3 is
  checked against the bucket and object ARNs already.
- It checks TransactWriteItems as the action `dynamodb:TransactWriteItems`, while AWS authorizes
  each action of the transaction as its single-item call (Put: PutItem, Update: UpdateItem,
  Delete: DeleteItem, ConditionCheck: ConditionCheckItem) on its table; BatchGetItem and
  BatchWriteItem on each table they name.
- It recomputes an S3 request's signature from a canonical query string that differs from the
  SDK's for ListObjectsV2 (`?list-type=2&prefix=...`): SignatureDoesNotMatch. S3 signatures are
  not checked here (the access key still names the user whose policies apply).

Here each DynamoDB request is checked per (action, table ARN) as listed above, and each Kinesis
request against its stream's ARN (StreamARN, StreamName, or the stream a moto shard iterator
names); a denial is answered as AWS answers these JSON services (400 AccessDeniedException, which
the SDK parses; moto's is IAM's XML error). Conditions are not evaluated (moto does not evaluate
them for identity policies).

Usage: python moto-iam-server.py [moto_server arguments].
"""

import json
import os
import runpy
from urllib.parse import urlparse

from werkzeug.exceptions import HTTPException

from moto import settings
from moto.core.exceptions import JsonRESTError
from moto.core.authorization import ActionAuthenticatorMixin
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMRequest, S3IAMRequest
from moto.kinesis.responses import KinesisResponse
from moto.kinesis.utils import decompose_shard_iterator

TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def _authorize(response, checks):
    """checks: (action without the service prefix, resource ARN) pairs, all of which must pass."""
    if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
        ActionAuthenticatorMixin.request_count += 1
        return
    url = urlparse(response.uri)
    path = url.path + (f"?{url.query}" if url.query else "")
    for i, (action, resource) in enumerate(checks):
        request = IAMRequest(
            account_id=response.current_account,
            method=response.method,
            path=path,
            data=response.data,
            body=response.raw_body,
            headers=response.headers,
            action=action,
        )
        if i == 0:
            request.check_signature()
        try:
            request.check_action_permitted(resource)
        except HTTPException:
            # AWS answers a JSON-protocol request with a JSON error, which the SDK parses
            # (moto's is IAM's XML one: a deserialization error in the SDK).
            raise JsonRESTError(
                "AccessDeniedException",
                f"User: {request._access_key.arn} is not authorized to perform: "
                f"{request._action} on resource: {resource} because no identity-based policy "
                "allows the action",
            ) from None


def _body(response):
    try:
        return json.loads(response.raw_body or b"{}")
    except ValueError:
        return {}


def _dynamodb_checks(response):
    body = _body(response)
    action = response._get_action()

    def arn(table):
        if table.startswith("arn:"):
            return table
        return f"arn:aws:dynamodb:{response.region}:{response.current_account}:table/{table}"

    if action == "TransactWriteItems":
        checks = []
        for item in body.get("TransactItems", []):
            for kind, spec in item.items():
                checks.append((TRANSACT_ACTIONS[kind], arn(spec["TableName"])))
        return checks
    if action == "TransactGetItems":
        return [("GetItem", arn(item["Get"]["TableName"])) for item in body.get("TransactItems", [])]
    if action in ("BatchGetItem", "BatchWriteItem"):
        return [(action, arn(table)) for table in body.get("RequestItems", {})]
    if "TableName" in body:
        return [(action, arn(body["TableName"]))]
    return [(action, "*")]


def _kinesis_checks(response):
    body = _body(response)
    stream = body.get("StreamARN") or body.get("StreamName")
    if stream is None and "ShardIterator" in body:
        try:
            stream = decompose_shard_iterator(body["ShardIterator"])[0]
        except Exception:  # noqa: BLE001 (not a moto iterator: moto rejects it itself)
            stream = None
    if stream is None:
        resource = "*"
    elif stream.startswith("arn:"):
        resource = stream
    else:
        resource = f"arn:aws:kinesis:{response.region}:{response.current_account}:stream/{stream}"
    return [(response._get_action(), resource)]


def _dynamodb_authorize(self, resource="*"):
    _authorize(self, _dynamodb_checks(self))


def _kinesis_authorize(self, resource="*"):
    _authorize(self, _kinesis_checks(self))


S3IAMRequest.check_signature = lambda self: None
DynamoHandler._authenticate_and_authorize_normal_action = _dynamodb_authorize
KinesisResponse._authenticate_and_authorize_normal_action = _kinesis_authorize

if __name__ == "__main__":
    runpy.run_path(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "moto-server.py"),
        run_name="__main__",
    )
