"""Drives a running holdfast server through a Python client generated from
its /openapi.json by openapi-python-client: create, get, list, a delete the
server refuses without the name, a delete with the name, and a restore.
Usage: check_client.py BASE_URL TOKEN (the generated package on sys.path)."""

import sys
import time

from holdfast_client import AuthenticatedClient
from holdfast_client.api.workspaces import (
    create_workspace,
    delete_workspace,
    get_workspace,
    list_workspaces,
    restore_workspace,
)
from holdfast_client.models import CreateWorkspaceRequest, DeleteResponse, ErrorBody, WorkspaceView


def main() -> None:
    base_url, token = sys.argv[1], sys.argv[2]
    client = AuthenticatedClient(base_url=base_url, token=token)
    made = create_workspace.sync(
        client=client,
        body=CreateWorkspaceRequest.from_dict(
            {"name": "sdk-check", "runtime": {"command": ["sh", "-c", "exec sleep infinity"]}}
        ),
    )
    assert isinstance(made, WorkspaceView), made
    wid = made.id
    got = get_workspace.sync(client=client, id=wid)
    assert isinstance(got, WorkspaceView) and got.name == "sdk-check", got
    listed = list_workspaces.sync(client=client)
    assert any(w.id == wid for w in listed), listed

    refused = delete_workspace.sync_detailed(client=client, id=wid)
    assert refused.status_code == 400, refused.status_code
    assert isinstance(refused.parsed, ErrorBody), refused.parsed
    assert refused.parsed.code == "destructive_action_requires_confirmation", refused.parsed.code
    assert get_workspace.sync(client=client, id=wid).status.value != "removed"

    deleted = delete_workspace.sync(client=client, id=wid, x_confirm_name="sdk-check")
    assert isinstance(deleted, DeleteResponse), deleted
    assert deleted.status == "removed", deleted
    assert get_workspace.sync(client=client, id=wid).status.value == "removed"

    restored = restore_workspace.sync_detailed(client=client, id=wid)
    assert restored.status_code in (200, 202), (restored.status_code, restored.content)
    deadline = time.time() + 30
    while get_workspace.sync(client=client, id=wid).status.value == "removed":
        assert time.time() < deadline, "the restore did not bring the workspace back"
        time.sleep(0.2)
    print("python client: create, get, list, delete (refused without the name, then with it), restore: ok")


if __name__ == "__main__":
    main()
